"""Task templates: how a task's items become prompts, training pairs and retrieval text.

Every task answers the same questions for the stages downstream:

* `query_prompt(fields)` -> the task prompt for raw fields (LaMP's exact query prompts);
* `item_pair(item)` -> (prompt, target) built from one history item, the pairs OPPU
  trains each user's LoRA on (Tan et al. 2024, Sec. 3);
* `item_text(item)` / `query_text(query)` -> what BM25 indexes and searches with;
* `render_item(item)` -> one retrieved item in a prompt, following LaMP's per-profile-entry
  prompts (Salemi et al. 2023, `LaMP/prompts/prompts.py`);
* `build_prompt(task_input, retrieved, profile)` -> the personalized prompt (see its format);
* `parse_output(text)` -> the normalized answer (a label for label tasks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ownlm.data.prompt import Prompt, assemble
from ownlm.data.records import Item, Query
from ownlm.errors import ConfigError

# Character budgets: tiny backbones have short contexts, so every long field is cut.
MAX_ITEM_CHARS = 600  # per field of a retrieved item in `render_item` / `build_prompt`
MAX_INPUT_CHARS = 2000  # per field of the task input in `query_prompt` / `item_pair`
MAX_PROFILE_CHARS = 200  # a profile: built to fit (`retrieval.profiles`), cut in `build_prompt`
KINDS = ("classification", "rating", "generation")  # what a task's `kind` may be


def check_kind(kind: str, what: str = "task kind") -> str:
    if kind not in KINDS:
        raise ConfigError(f"{what} must be one of {KINDS} but the value passed is {kind!r}")
    return kind


_FIELD = re.compile(r"{(\w+)}")
_NUMBER = re.compile(r"[-+]?\d+(\.\d+)?")  # a label that is a number: "-3", "4", "2.5"


def truncate(text: str, max_chars: int | None) -> str:
    """Cut `text` to at most `max_chars` characters (on a word boundary, with "...")."""
    text = text.strip()
    if max_chars is None or len(text) <= max_chars:
        return text
    cut = text[: max(max_chars - 3, 0)]
    if " " in cut[len(cut) // 2 :]:
        cut = cut[: cut.rfind(" ")]
    return cut.rstrip() + "..."


def _fill(template: str, fields: dict[str, str], max_chars: int | None, what: str) -> str:
    names = _FIELD.findall(template)
    missing = [n for n in names if n not in fields]
    if missing:
        raise KeyError(f"{what} needs field(s) {missing}; got {sorted(fields)}")
    return _FIELD.sub(lambda m: truncate(str(fields[m.group(1)]), max_chars), template)


@dataclass(frozen=True)
class Task:
    """One personalization task: labels, field names and `{field}` prompt templates (the
    exact LaMP prompts for LaMP's tasks; `ownlm.data.task_file` reads one from YAML)."""

    name: str
    kind: str  # "classification" | "rating" | "generation"
    labels: tuple[str, ...]  # empty for generation; float(label) works for ratings
    input_field: str  # the history-item field holding the task input, e.g. "description"
    output_field: str  # the history-item field holding the user's answer, e.g. "tag"
    description: str
    prompt: str  # query template, e.g. "...description: {description}"
    item_template: (
        str  # one retrieved item, e.g. 'the tag for the movie: "{description}" is "{tag}"'
    )
    # Template for training pairs when history items differ from queries (LaMP-1: the
    # profile holds papers, not citation choices); None -> use `prompt`.
    pair_prompt: str | None = None
    history_note: str = ""  # appended after the retrieved items (LaMP-5/7 wording)
    text_fields: tuple[str, ...] = ()  # item fields indexed for retrieval; () -> input_field
    query_text_fields: tuple[str, ...] = ()  # query fields used as retrieval query

    @property
    def fields(self) -> tuple[str, ...]:
        """Fields every history item must have."""
        names = _FIELD.findall(self.pair_prompt or self.prompt) + [self.output_field]
        names += _FIELD.findall(self.item_template)
        return tuple(dict.fromkeys(names))

    @property
    def ordinal(self) -> bool:
        """Numeric labels scored by distance (MAE): decoded by median (`backbone.decode`)."""
        numbers = [_NUMBER.fullmatch(label) for label in self.labels]
        return self.kind == "rating" and bool(numbers) and all(numbers)

    @property
    def labelled_history(self) -> bool:
        """Whether a history item's output is one of `labels`, the answer a query asks for
        (checked at load). LaMP-1's history holds papers (abstract -> title), not choices."""
        return bool(self.labels) and self.pair_prompt is None

    # -- prompts -------------------------------------------------------------------------
    def query_prompt(self, fields: dict[str, str], max_chars: int | None = MAX_INPUT_CHARS) -> str:
        """The task prompt for raw fields, e.g. {"description": ...} for LaMP-2."""
        return _fill(self.prompt, fields, max_chars, f"task {self.name} prompt")

    def item_pair(self, item: Item, max_chars: int | None = MAX_INPUT_CHARS) -> tuple[str, str]:
        """(prompt, target) for one history item: the prompt as a query's, the item's output."""
        template = self.pair_prompt or self.prompt
        prompt = _fill(template, item.fields, max_chars, f"task {self.name} training pair")
        return prompt, item.fields[self.output_field].strip()

    def render_item(self, item: Item, max_chars: int | None = MAX_ITEM_CHARS) -> str:
        """One retrieved history item as LaMP writes profile entries in prompts."""
        return _fill(self.item_template, item.fields, max_chars, f"task {self.name} item")

    def build_prompt(
        self,
        task_input: str,
        retrieved: list[Item] | tuple[Item, ...] = (),
        profile: str | None = None,
        max_item_chars: int | None = MAX_ITEM_CHARS,
        max_profile_chars: int | None = MAX_PROFILE_CHARS,
    ) -> Prompt:
        """The prompt at inference (and for OPPU's retrieval-augmented training pairs),
        with its shorter fallbacks (`data.prompt.assemble`: the format and the order in
        which personal context is given up to fit a context).

        Retrieved items are joined with ", and " as in LaMP's prompts. Without retrieved
        items and profile, `task_input` is returned unchanged (non-personalized baseline).
        """
        rendered = [self.render_item(it, max_item_chars) for it in retrieved]
        cut = truncate(profile, max_profile_chars) if profile and profile.strip() else None
        return assemble(task_input, rendered, cut, ", and ", self.history_note)

    # -- retrieval text ------------------------------------------------------------------
    def item_text(self, item: Item) -> str:
        """Text of a history item indexed for retrieval (its input fields)."""
        names = self.text_fields or (self.input_field,)
        return " ".join(item.fields[n] for n in names if n in item.fields).strip()

    def query_text(self, query: Query) -> str:
        """Retrieval query: the raw input field(s) when known, else the prompt minus instruction."""
        names = self.query_text_fields or (self.input_field,)
        if all(n in query.fields for n in names):
            return " ".join(query.fields[n] for n in names).strip()
        extracted = self.extract_fields(query.input)
        if all(n in extracted for n in names):
            return " ".join(extracted[n] for n in names).strip()
        return query.input.strip()

    def extract_fields(self, prompt: str) -> dict[str, str]:
        """Raw fields recovered from a query prompt built with `prompt` ({} when not possible).

        Works for templates with quoted fields (LaMP-1) and for templates ending with one
        `{field}` after a marker such as "description:" (the other tasks).
        """
        names = _FIELD.findall(self.prompt)
        if len(names) > 1:  # LaMP-1: every field sits between double quotes
            quoted = re.findall(r'"(.*?)"', prompt, flags=re.S)
            return dict(zip(names, quoted, strict=True)) if len(quoted) == len(names) else {}
        if len(names) != 1 or not self.prompt.endswith("{" + names[0] + "}"):
            return {}
        prefix = self.prompt[: -len(names[0]) - 2]
        if prompt.startswith(prefix):
            return {names[0]: prompt[len(prefix) :].strip()}
        marker = prefix.rstrip().split(" ")[-1]  # e.g. "description:" or "article:"
        at = prompt.rfind(marker)
        return {names[0]: prompt[at + len(marker) :].strip()} if at >= 0 else {}

    # -- answers -------------------------------------------------------------------------
    def parse_output(self, text: str) -> str:
        """Strip; for label tasks return the label the answer starts with, if any."""
        text = text.strip()
        if not self.labels:
            return text
        probe = text.lstrip("\"'` ").lower()
        for label in sorted(self.labels, key=len, reverse=True):  # "-1" before "1"
            if probe.startswith(label.lower()):
                return label
        return text


# -- registry ------------------------------------------------------------------------------
LAMP2_TAGS = (
    "sci-fi", "based on a book", "comedy", "action", "twist ending", "dystopia", "dark comedy",
    "classic", "psychology", "fantasy", "romance", "thought-provoking", "social commentary",
    "violence", "true story",
)  # fmt: skip

# Labels of the demo-tags task; `ownlm.data.demo` draws every user's vocabulary from it.
DEMO_TAGS = (
    "sci-fi", "fantasy", "crime", "romance", "action", "comedy", "dark", "thriller",
    "feel-good", "thought-provoking",
)  # fmt: skip

STUDEMO_DIMENSIONS = (
    "joy", "trust", "anticipation", "surprise", "fear", "sadness", "disgust", "anger",
    "valence", "arousal",
)  # fmt: skip

TASKS: dict[str, Task] = {}


def register(task: Task) -> Task:
    """Add a task to `TASKS` (name must be new)."""
    if task.name in TASKS:
        raise ConfigError(f"task {task.name!r} is already registered; pick another name")
    TASKS[task.name] = task
    return task


def get_task(name: str | Task) -> Task:
    """The registered task called `name` (a Task passes through; a task defined in YAML:
    `ownlm.data.task_file.resolve_task`)."""
    if isinstance(name, Task):
        return name
    if name not in TASKS:
        known = f"{', '.join(TASKS)}, or your own in YAML (task: path/to/task.yaml)"
        raise ConfigError(f"unknown task {name!r}; known tasks: {known}")
    return TASKS[name]


# Query prompts: LaMP's `create_*_prompt` functions; item templates: its per-profile
# entries. OPPU uses the same ones.
_LAMP_TITLE_PROMPT = "Generate a title for the following abstract of a paper: {abstract}"


def _register_lamp_labelled() -> None:
    """LaMP-1 (citation), LaMP-2 (movie tags) and LaMP-3 (product rating): a label to
    choose from a fixed set."""
    register(
        Task(
            name="LaMP-1",
            kind="classification",
            labels=("[1]", "[2]"),
            input_field="abstract",
            output_field="title",
            description="Personalized citation identification: which of two papers the author cites.",
            prompt='For an author who has written the paper with the title "{title}", which reference '
            'is related? Just answer with [1] or [2] without explanation. [1]: "{ref1}" [2]: "{ref2}"',
            item_template='"{title}"',
            # LaMP-1 profiles are the author's papers (title, abstract) without citation
            # choices, so a history item trains abstract -> title (as OPPU does).
            pair_prompt=_LAMP_TITLE_PROMPT,
            text_fields=("title", "abstract"),
            query_text_fields=("ref1", "ref2"),
        )
    )
    register(
        Task(
            name="LaMP-2",
            kind="classification",
            labels=LAMP2_TAGS,
            input_field="description",
            output_field="tag",
            description="Personalized movie tagging: the tag this user gives a movie.",
            prompt="Which tag does this movie relate to among the following tags? Just answer with "
            f"the tag name without further explanation. tags: [{', '.join(LAMP2_TAGS)}] "
            "description: {description}",
            item_template='the tag for the movie: "{description}" is "{tag}"',
        )
    )
    register(
        Task(
            name="LaMP-3",
            kind="rating",
            labels=("1", "2", "3", "4", "5"),
            input_field="text",
            output_field="score",
            description="Personalized product rating: the 1-5 score of this user's review.",
            prompt="What is the score of the following review on a scale of 1 to 5? just answer "
            "with 1, 2, 3, 4, or 5 without further explanation. review: {text}",
            item_template='{score} is the score for "{text}"',
        )
    )


def _register_lamp_generation() -> None:
    """LaMP-4 to LaMP-7: text written in the user's style (headlines, titles, email
    subjects, tweets)."""
    for name, what, prompt, field, kind in [
        (
            "LaMP-4",
            "news headline",
            "Generate a headline for the following article: {text}",
            "text",
            "the title",
        ),
        ("LaMP-5", "scholarly title", _LAMP_TITLE_PROMPT, "abstract", "a title"),
        (
            "LaMP-6",
            "email subject",
            "Generate a subject for the following email: {text}",
            "text",
            "the title",
        ),
    ]:
        register(
            Task(
                name=name,
                kind="generation",
                labels=(),
                input_field=field,
                output_field="title",
                description=f"Personalized {what} generation in the user's style.",
                prompt=prompt,
                item_template=f'"{{title}}" is {kind} for "{{{field}}}"',
                history_note=" Following the given patterns" if name == "LaMP-5" else "",
            )
        )
    register(
        Task(
            name="LaMP-7",
            kind="generation",
            labels=(),
            input_field="text",
            output_field="text",
            description="Personalized tweet paraphrasing. History items hold only the user's "
            "tweets, so a pair is (paraphrase prompt of the tweet, the tweet itself): the adapter "
            "learns to write in the user's own wording.",
            prompt="Paraphrase the following tweet without any explanation before or after it: {text}",
            item_template='"{text}"',
            history_note=" are written by a person. Following the given patterns",
        )
    )


def _register_annotators() -> None:
    for dim in STUDEMO_DIMENSIONS:
        if dim == "valence":
            labels = tuple(str(i) for i in range(-3, 4))
            question = "how negative (-3) or positive (3) is the following text for you?"
        else:
            labels = ("0", "1", "2", "3")
            feeling = "arousal" if dim == "arousal" else dim
            question = f"how much {feeling} does the following text express for you?"
        register(
            Task(
                name=f"studemo-{dim}",
                kind="rating",
                labels=labels,
                input_field="text",
                output_field="label",
                description=f"StudEmo (PEFT-U): the {dim} score this annotator gives a review.",
                prompt=f"On a scale of {labels[0]} to {labels[-1]}, {question} Just answer with "
                f"{', '.join(labels[:-1])} or {labels[-1]} without further explanation. text: {{text}}",
                item_template='{label} is the score for "{text}"',
            )
        )
    register(
        Task(
            name="tweeteval-hate",
            kind="classification",
            labels=("Hateful", "Non-hateful"),
            input_field="text",
            output_field="label",
            description="TweetEval hate (PEFT-U): whether this annotator finds a tweet hateful.",
            prompt="Is the following tweet hateful? Just answer with Hateful or Non-hateful "
            "without further explanation. tweet: {text}",
            item_template='the label for the tweet: "{text}" is "{label}"',
        )
    )


def _register_demo() -> None:
    register(
        Task(
            name="demo-tags",
            kind="classification",
            labels=DEMO_TAGS,
            input_field="description",
            output_field="tag",
            description="Built-in demo: each user tags movies by their own habit (ownlm.data.demo).",
            prompt="Which tag does this movie relate to among the following tags? Just answer with "
            f"the tag name without further explanation. tags: [{', '.join(DEMO_TAGS)}] "
            "description: {description}",
            item_template='the tag for the movie: "{description}" is "{tag}"',
        )
    )
    generation = (  # name, input and output fields, description, prompt, retrieved item
        ("demo-headlines", "text", "title", "each user writes headlines in their own style",
         "Generate a headline for the following article: {text}",
         '"{title}" is the title for "{text}"'),
        ("demo-rewrite", "text", "rewrite", "each user passes on notices in their own words",
         "Pass on the following notice in your own words: {text}",
         '"{rewrite}" passes on "{text}"'),
    )  # fmt: skip
    for name, source, target, what, prompt, template in generation:
        register(
            Task(name, "generation", (), source, target, f"Built-in demo: {what}.", prompt,
                 template)
        )  # fmt: skip


_register_lamp_labelled()  # LaMP-1 to LaMP-7, in order
_register_lamp_generation()
_register_annotators()
_register_demo()
