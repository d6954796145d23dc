r"""MATH final answers: the last `\boxed{...}` of a solution, normalized for string comparison.

Extraction: the last `\boxed` or `\fbox` in the text; its braced argument with braces balanced
(`\boxed{\frac{1}{2}}` -> `\frac{1}{2}`), or for `\boxed 5` the text up to the next `$` or line
end. No box, an empty box or unbalanced braces: None (scored wrong).

Normalization (Hendrycks et al. 2021 / Minerva style, our own rules), applied to the extracted
answer and to the reference alike, in this order:
 1. drop line breaks, `\!`, the spacing commands `\,` `\;` `\:` and a lone `\ `, `{,}` (as in
    `1{,}000`), `\displaystyle`; `\\` becomes `\`;
 2. `\dfrac`/`\tfrac` -> `\frac`; `\left` and `\right` are dropped (not `\rightarrow`);
 3. degrees `^{\circ}`/`^\circ`, dollars `\$`/`$`, percent `\%`/`%` are dropped;
 4. units: from the first `\text{ ...}`/`\mbox{ ...}` whose text starts with a space, the rest is
    cut (`10\text{ cm}^2` -> `10`); other `\text{X}`, `\textbf{X}`, `\mbox{X}`, `\mathrm{X}`
    become `X`; trailing unit words after a number or a brace (`5 cm`, `12 dollars`,
    `3 square units`, `4 ft^2`; the list `_UNIT_WORDS`) are dropped;
 5. `\sqrt2` -> `\sqrt{2}`, `\frac12` -> `\frac{1}{2}` (one-character arguments braced);
 6. all spaces are removed; a trailing `.` is dropped;
 7. `x=5` -> `5` when the left side has at most 2 characters; `a/b` of two integers ->
    `\frac{a}{b}`;
 8. numbers: thousands commas dropped (`1,000` -> `1000`, tuples like `(1,2)` untouched), a
    leading `.` gets a `0` (`.5` -> `0.5`), trailing zero decimals dropped (`5.0`, `5.00` -> `5`).
Two answers are equal when their normalized strings are equal; no symbolic equivalence.
"""

from __future__ import annotations

import re

_BOX = re.compile(r"\\(?:boxed|fbox)")
_UNIT_WORDS = ("units", "unit", "square", "cubic", "degrees", "degree", "cm", "mm", "km", "meters",
               "meter", "inches", "inch", "feet", "foot", "ft", "yards", "miles", "mile", "mph",
               "dollars", "dollar", "cents", "cent", "hours", "hour", "minutes", "minute", "seconds",
               "second", "days", "day", "pounds", "pound", "ways", "people", "students")
_TRAILING_UNIT = re.compile(r"(?<=[\d}])(?:\s*(?:" + "|".join(_UNIT_WORDS)
                            + r")\b(?:\^\{?[23]\}?)?)+\s*$")
_WRAPPER = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_UNIT_TEXT = re.compile(r"\\(?:text|mbox)\{\s")


def _braced(text: str, start: int) -> str | None:
    """The contents of the brace group opening at `text[start]` ("{"), None if unbalanced."""
    depth = 0
    for k in range(start, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                return text[start + 1:k]
    return None


def last_boxed(text: str) -> str | None:
    """The argument of the last `\\boxed`/`\\fbox` in `text`, None when there is none."""
    found = list(_BOX.finditer(text))
    if not found:
        return None
    rest = found[-1].end()
    if text.startswith("{", rest):
        inside = _braced(text, rest)
    elif text[rest:rest + 1].isspace():  # `\boxed 5$`: up to the closing `$` or the line end
        inside = re.split(r"[$\n]", text[rest:].lstrip(" \t"), maxsplit=1)[0]
    else:
        return None
    return inside.strip() or None if inside is not None else None


def _brace_args(s: str, command: str, n_args: int) -> str:
    """Brace the one-character arguments of `command` (`\\frac12` -> `\\frac{1}{2}`)."""
    out, k = [], 0
    while (j := s.find(command, k)) != -1:
        out.append(s[k:j + len(command)])
        k = j + len(command)
        if k < len(s) and s[k].isalpha():  # another command that starts the same (\fracs)
            continue
        for _ in range(n_args):
            while k < len(s) and s[k] == " ":  # `\sqrt 2`: LaTeX skips the space
                k += 1
            if k >= len(s):
                break
            if s[k] == "{":
                inside = _braced(s, k)
                if inside is None:
                    break
                out.append("{" + inside + "}")
                k += len(inside) + 2
            elif s[k] == "\\":  # a command argument (`\frac\pi2`): leave the rest as written
                break
            else:
                out.append("{" + s[k] + "}")
                k += 1
    out.append(s[k:])
    return "".join(out)


def normalize(answer: str) -> str:
    """`answer` under the rules of the module docstring."""
    s = answer.replace("\n", "").replace("\\!", "")
    s = re.sub(r"\\[,;:]|(?<!\\)\\ |\{,\}|\\displaystyle", "", s)
    s = s.replace("\\\\", "\\")
    s = re.sub(r"\\[dt]frac", r"\\frac", s)
    s = re.sub(r"\\(?:left|right)(?![a-zA-Z])", "", s)
    s = re.sub(r"\^\{?\\circ\}?", "", s)
    s = re.sub(r"\\?[$%]", "", s)
    if (unit := _UNIT_TEXT.search(s)) is not None:
        s = s[:unit.start()]
    while (unwrapped := _WRAPPER.sub(r"\1", s)) != s:
        s = unwrapped
    s = _TRAILING_UNIT.sub("", s)
    s = _brace_args(_brace_args(s, "\\sqrt", 1), "\\frac", 2)
    s = s.replace(" ", "").rstrip(".")
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = re.sub(r"^(-?)(\d+)/(\d+)$", r"\1\\frac{\2}{\3}", s)
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        s = s.replace(",", "")
    s = re.sub(r"(^|[^\d])\.(\d)", r"\g<1>0.\2", s)
    return re.sub(r"^(-?\d+)\.0+$", r"\1", s)


def extract(generation: str) -> dict[str, str | None]:
    """{"exact_match": the last boxed answer, or None}."""
    return {"exact_match": last_boxed(generation)}


def correct(extracted: str | None, gold: str) -> bool:
    return extracted is not None and normalize(extracted) == normalize(gold)
