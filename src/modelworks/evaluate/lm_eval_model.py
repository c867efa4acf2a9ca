"""lm-evaluation-harness model "modelworks": runs lm-eval tasks on a modelworks run, no conversion.

    python -m modelworks.evaluate.lm_eval_model run --model modelworks \
        --model_args pretrained=runs/quickstart,device=cpu,batch_size=16 --tasks hellaswag

or from Python, after `import modelworks.evaluate.lm_eval_model` (which registers the class):

    lm_eval.simple_evaluate(model="modelworks", model_args="pretrained=runs/quickstart", ...)

`pretrained` is a run folder (its pretrain/ checkpoint and preprocess/tokenizer.json). The three
request types are answered by `evaluate.lm.LMScorer`, the code our own `evaluate.tasks` use, so a
task scored both ways gives the same numbers. Needs `pip install lm-eval`.
"""

from __future__ import annotations

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from modelworks.evaluate.lm import LMScorer


@register_model("modelworks")
class ModelworksLM(LM):
    def __init__(
        self, pretrained: str, device: str = "auto", batch_size: int | str = 16, **_: object
    ) -> None:
        super().__init__()
        bs = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.scorer = LMScorer.from_run(pretrained, device, bs)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self.scorer.loglikelihood([tuple(r.args) for r in requests])

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return self.scorer.loglikelihood_rolling([r.args[0] for r in requests])

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        reqs = []
        for r in requests:
            context, kwargs = r.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            reqs.append((context, until, int(kwargs.get("max_gen_toks", 256))))
        return self.scorer.generate_until(reqs)


if __name__ == "__main__":
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()
