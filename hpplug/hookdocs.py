"""The hook reference of ``docs/plugins.md``, generated from the hookspec docstrings, so the
guide and the code cannot drift apart (pytest's way: the docstrings are the one source).

    python -m hpplug.hookdocs            # rewrite the reference in docs/plugins.md
    python -m hpplug.hookdocs --check    # exit 1 when docs/plugins.md differs (tests run this)
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from hpplug import hookspecs

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"
BEGIN = "<!-- hook reference: generated from hpplug/hookspecs.py by `python -m hpplug.hookdocs`; edit the docstrings -->"
END = "<!-- end of the generated hook reference -->"


def hookspec_functions() -> dict[str, object]:
    """Every hookspec, in the order hookspecs.py defines them (the order a run fires them)."""
    return {name: f for name, f in vars(hookspecs).items() if name.startswith("hpplug_") and hasattr(f, "hpplug_spec")}


def signature(name: str, function: object) -> str:
    """``def name(arg: type, ...) -> type`` as written in hookspecs.py (annotations are strings)."""
    sig = inspect.signature(function)  # type: ignore[arg-type]
    args = ", ".join(f"{p.name}: {p.annotation}" for p in sig.parameters.values())
    return f"def {name}({args}) -> {sig.return_annotation}"


def render() -> str:
    """The generated part of the guide: the hook order, then one section per hook."""
    parts = ["Every hook hpplug calls, in the order a run fires them:\n", "```text\n" + hookspecs.ORDER + "```\n"]
    for name, function in hookspec_functions().items():
        summary, _, body = (inspect.getdoc(function) or "").partition("\n\n")
        marker = "  # first result wins" if function.hpplug_spec["firstresult"] else ""  # type: ignore[attr-defined]
        parts.append(f"### `{name}`\n\n```python\n{signature(name, function)}{marker}\n```\n\n{summary}\n\n{body}\n")
    return "\n".join(parts)


def spliced(text: str) -> str:
    """``text`` (the guide) with its generated part replaced by :func:`render`."""
    head, found, rest = text.partition(BEGIN + "\n")
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{GUIDE} has no {BEGIN!r} ... {END!r} markers")
    return f"{head}{BEGIN}\n{render()}{END}{tail}"


def main(argv: list[str]) -> int:
    text = GUIDE.read_text()
    if "--check" in argv:
        if spliced(text) != text:
            print(f"{GUIDE} is out of date: run python -m hpplug.hookdocs", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(spliced(text))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
