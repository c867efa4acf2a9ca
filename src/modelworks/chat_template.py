"""Chat templates: the default one for our own runs and its SFT form, rendering a conversation in
Jinja's sandbox as Hugging Face does, and finding the template (and start/end tokens) stored
with a run or a Hugging Face folder. One module for the trainer (tasks/chat.py), the server
(serve/openai.py, serve/engine.py) and the exports.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

# The template used when the model folder has none (our own runs): plain text, one turn per
# paragraph. Generation stops at the next "\n\nUser:" so the model does not answer for the user.
DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' or m.role == 'developer' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n\n"
    "{% else %}Assistant: {{ m.content }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_CHAT_STOP = "\n\nUser:"
# The same turns for chat SFT of our own models: each assistant turn ends with the end token,
# so a fine-tuned model learns to stop (tasks/chat.py)
SFT_CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' or m.role == 'developer' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n\n"
    "{% else %}Assistant: {{ m.content }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def render_chat(
    template: str | None,
    messages: list[dict],
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """A conversation as the prompt text `template` (None: the default) makes of it, rendered
    in Jinja's sandbox as Hugging Face does; a template's refusal is a jinja2.TemplateError."""
    return _compiled(template or DEFAULT_CHAT_TEMPLATE).render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


@functools.lru_cache(maxsize=16)
def _compiled(template: str):
    """Compiling costs ~1000x a render: a fine-tune renders every conversation several times."""
    import time

    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)

    def raise_exception(message):  # Hugging Face templates call this to refuse a conversation
        raise jinja2.TemplateError(message)

    env.globals.update(raise_exception=raise_exception, strftime_now=time.strftime)
    return env.from_string(template)


def engine_chat_text(engine, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """`render_chat` with a serve.engine.Engine's template and start / end token texts."""
    eos = engine.token_text(min(engine.eos)) if engine.eos else ""
    return render_chat(
        engine.chat_template, messages, add_generation_prompt, engine.token_text(engine.eot), eos
    )


def run_chat_template(run_dir: str | Path) -> str | None:
    """The chat template stored with a run's final model, else with its preprocess, else None."""
    from modelworks.artifacts import final_model_dir

    run_dir = Path(run_dir)
    for folder in (final_model_dir(run_dir), run_dir / "preprocess"):
        for name in ("chat_template.jinja", "tokenizer_config.json"):
            path = folder / name
            if path.is_file():
                text = path.read_text()
                if name.endswith(".jinja"):
                    return text
                template = json.loads(text).get("chat_template")
                if isinstance(template, str):
                    return template
    return None


def hf_chat_tokens(folder: str | Path) -> tuple[int, set[int], str | None]:
    """A Hugging Face folder's start token id, end token ids and chat template (or None)."""
    folder = Path(folder)
    cfg = _json(folder / "config.json")
    gen = _json(folder / "generation_config.json")
    tcfg = _json(folder / "tokenizer_config.json")
    eos = gen.get("eos_token_id", cfg.get("eos_token_id"))
    eos = set(eos) if isinstance(eos, list) else ({eos} if eos is not None else set())
    bos = gen.get("bos_token_id", cfg.get("bos_token_id"))
    if bos is None:
        bos = min(eos) if eos else 0
    template = tcfg.get("chat_template") if isinstance(tcfg.get("chat_template"), str) else None
    return bos, eos, template


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
