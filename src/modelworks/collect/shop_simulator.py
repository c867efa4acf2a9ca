"""A seeded shop simulator: the built-in event log of the user_behaviour task, with its truth.

    collect.sources: [{type: shop_simulator, users: 20000}]

Users are drawn from planted segments (SEGMENTS), each with its own category tastes (85% of
its views on four "home" categories), session rate, view -> cart and cart -> purchase rates and
churn hazard; each user multiplies the segment's rates by lognormal noise. A user signs up on a
random day of the first three quarters of the period (their first session), then visits as a
Poisson process until they churn (an exponential lifetime). A session views 1 + Poisson(3)
items (category by the user's taste, item by Zipf popularity inside it); a view may be carted,
a cart may be bought (value = the item's price). Everything is drawn as NumPy arrays, never one
Python object per event.

The truth (`truth.parquet`, beside the log) holds each user's segment and latent rates, so the
true probability of a purchase in any window is known in closed form (`true_probability`): an
oracle the models are measured against. The oracle also knows whether a user has already
churned, which no history shows; `history_probability` is the best any model of the log can do:
the simulator's own model, the segment given, everything else inferred from the user's history.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

CATEGORIES = [
    "electronics",
    "phones",
    "computers",
    "gaming",
    "fashion",
    "shoes",
    "bags",
    "jewelry",
    "home",
    "garden",
    "kitchen",
    "furniture",
    "books",
    "toys",
    "music",
    "stationery",
    "sports",
    "outdoors",
    "fitness",
    "cycling",
]  # fmt: skip  (segment s's home categories are 4s .. 4s+3)
# name, share of users, sessions/day, P(cart | view), P(purchase | cart), churn hazard/day
SEGMENTS = [
    ("gadget_deal_hunters", 0.25, 0.20, 0.10, 0.30, 0.006),
    ("fashion_loyalists", 0.15, 0.14, 0.30, 0.60, 0.002),
    ("home_browsers", 0.30, 0.10, 0.05, 0.25, 0.010),
    ("book_one_timers", 0.15, 0.07, 0.25, 0.50, 0.040),
    ("sport_enthusiasts", 0.15, 0.30, 0.15, 0.40, 0.004),
]
ITEMS_PER_CATEGORY = 50
DAYS = 120
START = np.datetime64("2026-01-05T00:00:00", "us")  # a Monday: weekly cohorts start clean
VIEWS_MEAN = 3.0  # a session views 1 + Poisson(VIEWS_MEAN) items
HOME_SHARE = 0.85


def items() -> tuple[list[str], np.ndarray, np.ndarray]:
    """(item names, category index per item, price per item); the same for every seed."""
    rng = np.random.default_rng(0)
    names = [f"{c}-{i:03d}" for c in CATEGORIES for i in range(ITEMS_PER_CATEGORY)]
    cat = np.repeat(np.arange(len(CATEGORIES)), ITEMS_PER_CATEGORY)
    price = np.round(rng.lognormal(3.2, 0.7, len(names)), 2)
    return names, cat, price


def simulate(n_users: int, seed: int) -> tuple[pa.Table, pa.Table]:
    """(events, truth): events (user, time, event, item, category, value) in time order per
    session; truth (user, segment, session_rate, purchase_per_session, churn_hazard, signup,
    churn) per user."""
    rng = np.random.default_rng(seed)
    n_cat, n_seg = len(CATEGORIES), len(SEGMENTS)
    shares = np.array([s[1] for s in SEGMENTS])
    seg = rng.choice(n_seg, n_users, p=shares / shares.sum())
    params = np.array([s[2:] for s in SEGMENTS])[seg]  # (users, 4)
    rate = params[:, 0] * rng.lognormal(0, 0.5, n_users)
    cart = np.clip(params[:, 1] * rng.lognormal(0, 0.3, n_users), 0, 0.95)
    buy = np.clip(params[:, 2] * rng.lognormal(0, 0.3, n_users), 0, 0.95)
    hazard = params[:, 3]
    # tastes: HOME_SHARE on the segment's four categories, the rest spread over the others
    taste = rng.dirichlet(np.full(n_cat, 0.5), n_users) * (1 - HOME_SHARE)
    home = rng.dirichlet(np.full(4, 2.0), n_users) * HOME_SHARE
    for k in range(4):
        taste[np.arange(n_users), 4 * seg + k] += home[:, k]
    signup = rng.uniform(0, DAYS * 0.75, n_users)
    churn = signup + rng.exponential(1 / hazard)
    stop = np.minimum(churn, DAYS)
    n_sessions = 1 + rng.poisson(rate * (stop - signup))
    s_user = np.repeat(np.arange(n_users), n_sessions)
    first = np.concatenate([[0], np.cumsum(n_sessions)[:-1]])
    s_start = signup[s_user] + rng.uniform(0, 1, len(s_user)) * (stop - signup)[s_user]
    s_start[first] = signup  # the first session is the signup
    # views
    n_views = 1 + rng.poisson(VIEWS_MEAN, len(s_user))
    v_sess = np.repeat(np.arange(len(s_user)), n_views)
    v_user = s_user[v_sess]
    names, item_cat, price = items()
    v_cat = _draw_rows(rng, taste.astype(np.float32), v_user)
    zipf = 1.0 / np.arange(1, ITEMS_PER_CATEGORY + 1) ** 0.8
    v_item = v_cat * ITEMS_PER_CATEGORY + _draw_shared(rng, zipf, len(v_user))
    slot = 60 + rng.exponential(60, len(v_user))  # seconds a view (and its cart/buy) takes
    v_sess_first = np.concatenate([[0], np.cumsum(n_views)[:-1]])
    offset = np.cumsum(slot) - slot
    offset -= np.repeat(offset[v_sess_first], n_views)
    v_time = s_start[v_sess] * 86400 + offset
    carted = rng.uniform(size=len(v_user)) < cart[v_user]
    bought = carted & (rng.uniform(size=len(v_user)) < buy[v_user])
    # events: every view, then its cart 15 s later, then its purchase 30 s later
    kinds = np.concatenate([np.zeros(len(v_user)), np.ones(carted.sum()), np.full(bought.sum(), 2)])
    idx = np.concatenate([np.arange(len(v_user)), np.nonzero(carted)[0], np.nonzero(bought)[0]])
    t = v_time[idx] + kinds * 15
    keep = t < DAYS * 86400  # a session begun near the end is cut at the end
    order = np.lexsort((kinds[keep], t[keep], v_user[idx][keep]))
    idx, kinds, t = idx[keep][order], kinds[keep][order].astype(np.int8), t[keep][order]
    users = np.array([f"u{i:06d}" for i in range(n_users)])
    time = START + (t * 1e6).astype("timedelta64[us]")
    value = np.where(kinds == 2, price[v_item[idx]], np.nan)
    events = pa.table(
        {
            "user": pa.array(users[v_user[idx]]),
            "time": pa.array(time),
            "event": pa.DictionaryArray.from_arrays(
                pa.array(kinds), pa.array(["view", "cart", "purchase"])
            ).cast(pa.string()),
            "item": pa.array(np.array(names)[v_item[idx]]),
            "category": pa.array(np.array(CATEGORIES)[item_cat[v_item[idx]]]),
            "value": pa.array(value, mask=np.isnan(value)),
        }
    )
    p_buy = cart * buy  # per view
    per_session = 1 - (1 - p_buy) * np.exp(-VIEWS_MEAN * p_buy)
    truth = pa.table(
        {
            "user": pa.array(users),
            "segment": pa.array(np.array([s[0] for s in SEGMENTS])[seg]),
            "session_rate": pa.array(rate),
            "purchase_per_session": pa.array(per_session),
            "churn_hazard": pa.array(hazard),
            "signup": pa.array(START + (signup * 86400e6).astype("timedelta64[us]")),
            "churn": pa.array(
                START + (np.minimum(churn, 10 * DAYS) * 86400e6).astype("timedelta64[us]")
            ),
        }
    )
    return events, truth


def true_probability(
    truth: dict[str, np.ndarray], cutoff: np.datetime64, days: float
) -> np.ndarray:
    """P(at least one purchase in [cutoff, cutoff + days)) per user, as of the cutoff: 0 for a
    user who has churned, else purchases come at rate a = sessions/day x P(purchase | session)
    while alive, and the remaining lifetime is exponential with hazard h (memoryless), so
    P(none) = h/(a+h) (1 - e^-(a+h)H) + e^-(a+h)H. NaN for users who sign up after the cutoff."""
    a = truth["session_rate"] * truth["purchase_per_session"]
    h = truth["churn_hazard"]
    decay = np.exp(-(a + h) * days)
    p = 1 - (h / (a + h) * (1 - decay) + decay)
    alive = truth["churn"] > cutoff
    p = np.where(alive, p, 0.0)
    return np.where(truth["signup"] < cutoff, p, np.nan)


def user_history(events: pa.Table, cutoff: np.datetime64) -> dict[str, np.ndarray]:
    """Per user with an event before `cutoff` (columns user, time, event): the history that
    `history_probability` reads. A simulated session never pauses 30 minutes inside."""
    import duckdb

    con = duckdb.connect()
    con.register("log", events)
    return con.execute(
        """WITH e AS (SELECT user, time, event, time - lag(time) OVER (PARTITION BY user
                      ORDER BY time) AS gap FROM log WHERE time < $cut),
        s AS (SELECT *, gap IS NULL OR gap > INTERVAL 30 MINUTE AS starts FROM e)
        SELECT user, epoch($cut - min(time)) / 86400 AS tenure,
            epoch($cut - max(time) FILTER (starts)) / 86400 AS recency,
            count(*) FILTER (starts) AS sessions, count(*) FILTER (event = 'view') AS views,
            count(*) FILTER (event = 'cart') AS carts,
            count(*) FILTER (event = 'purchase') AS purchases
        FROM s GROUP BY user""",
        {"cut": cutoff.item()},
    ).fetchnumpy()


def history_bound(
    events: pa.Table, segments: list[str], users: list[str], cutoff: np.datetime64, days: float
) -> np.ndarray:
    """`history_probability` for `users` (each with an event before `cutoff`), whose planted
    segments (names) are `segments`, from the log `events` (columns user, time, event)."""
    history = user_history(events, cutoff)
    at = {u: i for i, u in enumerate(history.pop("user"))}
    order = np.array([at[u] for u in users])
    names = [s[0] for s in SEGMENTS]
    segment = np.array([names.index(x) for x in segments])
    return history_probability(segment, {k: np.asarray(v)[order] for k, v in history.items()}, days)


def history_probability(
    segment: np.ndarray, history: dict[str, np.ndarray], days: float, grid: int = 24
) -> np.ndarray:
    """P(at least one purchase in the `days` after the cutoff | the user's history before it):
    the Bayes posterior under this simulator, with the user's segment (index into SEGMENTS)
    given and their latent session rate, P(cart | view) and P(purchase | cart) integrated over
    the lognormal priors `simulate` draws them from (quantile grids of `grid`, 10 and 10
    points), and whether they have churned inferred from the silence since their last session.

    history (arrays per user): tenure (days from the first event to the cutoff), recency (days
    from the last session's start to the cutoff), sessions, views, carts, purchases. Likelihood
    of the history at rates (r, c, b) and hazard h, alive at the cutoff: r^(n-1) e^-(r+h)T, or
    churned since the last session: r^(n-1) h e^-(r+h)(T-R) (1 - e^-(r+h)R) / (r+h); times the
    binomials of carts among views and purchases among carts."""
    from scipy.stats import norm

    def quantiles(sigma: float, k: int) -> np.ndarray:
        return np.exp(sigma * norm.ppf((np.arange(k) + 0.5) / k))

    m_r, m_c, m_b = (a.ravel() for a in np.meshgrid(
        quantiles(0.5, grid), quantiles(0.3, 10), quantiles(0.3, 10), indexing="ij"))  # fmt: skip
    params = np.array([s[2:] for s in SEGMENTS])
    out = np.empty(len(segment))
    for s in range(0, len(segment), 1000):
        i = slice(s, s + 1000)
        seg = params[segment[i]]
        r = seg[:, :1] * m_r
        c = np.clip(seg[:, 1:2] * m_c, 0, 0.95)
        b = np.clip(seg[:, 2:3] * m_b, 0, 0.95)
        h = seg[:, 3:4]
        tenure, rec = history["tenure"][i, None], history["recency"][i, None]
        n, views, carts, buys = (
            history[k][i, None].astype(np.float64)
            for k in ("sessions", "views", "carts", "purchases")
        )
        common = (
            (n - 1) * np.log(r)
            + carts * np.log(c) + (views - carts) * np.log1p(-c)
            + buys * np.log(b) + (carts - buys) * np.log1p(-b)
        )  # fmt: skip
        alive = common - (r + h) * tenure
        churned = (
            common + np.log(h) - (r + h) * (tenure - rec)
            + np.log(-np.expm1(-(r + h) * np.maximum(rec, 1e-9))) - np.log(r + h)
        )  # fmt: skip
        top = np.maximum(alive.max(1, keepdims=True), churned.max(1, keepdims=True))
        w_alive, w_churned = np.exp(alive - top), np.exp(churned - top)
        per_view = c * b
        a = r * (1 - (1 - per_view) * np.exp(-VIEWS_MEAN * per_view))
        decay = np.exp(-(a + h) * days)
        p = 1 - (h / (a + h) * (1 - decay) + decay)
        out[i] = (w_alive * p).sum(1) / (w_alive + w_churned).sum(1)
    return out


def _draw_rows(rng, probs: np.ndarray, rows: np.ndarray, chunk: int = 200_000) -> np.ndarray:
    """One draw from probs[rows[i]] per i (inverse CDF), in chunks to bound memory."""
    cdf = np.cumsum(probs, 1)
    out = np.empty(len(rows), np.int64)
    for s in range(0, len(rows), chunk):
        r = rows[s : s + chunk]
        u = rng.uniform(size=len(r))[:, None] * cdf[r, -1:]
        out[s : s + chunk] = np.minimum((cdf[r] < u).sum(1), probs.shape[1] - 1)
    return out


def _draw_shared(rng, weights: np.ndarray, n: int) -> np.ndarray:
    cdf = np.cumsum(weights / weights.sum())
    return np.minimum(np.searchsorted(cdf, rng.uniform(size=n)), len(weights) - 1)
