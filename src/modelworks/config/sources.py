"""The `collect:` section: a list of sources, each one of the source types the collect readers
declare (`SourceConfig`, a union on `type`), and the base class of every config section (unknown
keys are errors, assignments are validated)."""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

from modelworks.collect.chat import ChatSource, SyntheticChatSource
from modelworks.collect.crawl import CrawlSource
from modelworks.collect.detection import CocoSource, DigitScenesSource, YoloSource
from modelworks.collect.events import EventsSource, ShopSimulatorSource
from modelworks.collect.files import FilesSource, WarcSource
from modelworks.collect.hf import HfSource
from modelworks.collect.image_sources import ImageTableSource, NpzSource
from modelworks.collect.interactions import (
    InteractionsSource,
    StdlibCallsSource,
    StdlibImportsSource,
)
from modelworks.collect.parallel import ParallelSource
from modelworks.collect.preference import PreferenceSource, WordProblemsSource
from modelworks.collect.python_qa import PythonQASource
from modelworks.collect.source import Source
from modelworks.collect.sources import DigitsSource, IdxSource, ImageFolderSource, PythonDocsSource
from modelworks.collect.tables import TableSource


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# every source type, declared next to its reader (collect/source.py has the base and the rule)
SOURCE_TYPES: dict[str, type[Source]] = {
    "python_docs": PythonDocsSource,
    "files": FilesSource,
    "warc": WarcSource,
    "crawl": CrawlSource,
    "hf": HfSource,
    "sklearn_digits": DigitsSource,
    "image_folder": ImageFolderSource,
    "idx": IdxSource,
    "image_table": ImageTableSource,
    "npz": NpzSource,
    "table": TableSource,
    "interactions": InteractionsSource,
    "stdlib_calls": StdlibCallsSource,
    "stdlib_imports": StdlibImportsSource,
    "parallel": ParallelSource,
    "chat": ChatSource,
    "synthetic_chat": SyntheticChatSource,
    "python_qa": PythonQASource,
    "events": EventsSource,
    "shop_simulator": ShopSimulatorSource,
    "preference": PreferenceSource,
    "word_problems": WordProblemsSource,
    "digit_scenes": DigitScenesSource,
    "coco": CocoSource,
    "yolo": YoloSource,
}
DEFAULT_SOURCE = "python_docs"  # a source that names no type


def _type_of(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("type", DEFAULT_SOURCE)
    return getattr(value, "type", None)


# one source: the class its `type` names (a discriminated union; an unknown type or an option
# its type does not have is an error naming the key)
SourceConfig = Annotated[
    Union[tuple(Annotated[cls, Tag(name)] for name, cls in SOURCE_TYPES.items())],  # noqa: UP007
    Discriminator(_type_of),
]
_ADAPTER: TypeAdapter = TypeAdapter(SourceConfig)


def parse_source(data: Any) -> Source:
    """One source from a mapping (`{type: files, paths: [...]}`), validated."""
    return _ADAPTER.validate_python(data)


class CollectConfig(_Section):
    sources: list[SourceConfig] = Field(
        default_factory=lambda: [PythonDocsSource()],
        description="where documents come from: a list of sources, each `{type: TYPE, "
        "...options}` (`modelworks collect --help` lists every type and its options)",
    )
