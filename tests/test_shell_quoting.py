"""Unit tests for keeping run data out of shell syntax: `shell_quote()`, and the static check
of shell text built by expressions (pure functions, plus /bin/sh to read what they make)."""

from __future__ import annotations

import subprocess

import pytest

from maestro.expressions import evaluate, quoted_concatenation, shell_quote
from maestro.steps import ShellParams, quoting_context_problem, shell_script_index

PAYLOADS = [
    "a; id; cat $MAESTRO_WORK_DIR/../../api-key",
    'it\'s $(id) `id` "quoted" \\ back',
    "line one\nid\n# not a comment",
    "",
    "-n",
    "*",
    "~root",
    "héllo wörld",
]


def sh_words(script: str) -> list[str]:
    """The arguments /bin/sh passes to a command for `script`'s words."""
    out = subprocess.run(
        ["/bin/sh", "-c", f"printf '%s\\0' {script}"], capture_output=True, check=True
    ).stdout
    return out.decode().split("\0")[:-1]


@pytest.mark.parametrize("payload", PAYLOADS)
def test_shell_quote_makes_one_literal_word(payload):
    assert sh_words(shell_quote(payload)) == [payload]
    assert sh_words("x" + shell_quote(payload) + "y") == [f"x{payload}y"]


@pytest.mark.parametrize(
    ("value", "word"),
    [(10, "10"), (1.5, "1.5"), (True, "true"), (None, "null"), ({"a": [1]}, '{"a": [1]}')],
)
def test_shell_quote_passes_other_values_as_json(value, word):
    assert sh_words(shell_quote(value)) == [word]


def test_shell_quote_is_a_cel_function():
    result = evaluate("'printf %s ' + shell_quote(params.x)", {"params": {"x": "a; id"}})
    assert result == "printf %s 'a; id'"
    assert evaluate("params.x.shell_quote()", {"params": {"x": "$(id)"}}) == "'$(id)'"


@pytest.mark.parametrize(
    ("source", "parts"),
    [
        ("'echo ' + shell_quote(params.x)", ["echo ", None]),
        ("shell_quote(params.x) + shell_quote(params.y)", [None, None]),
        # Brackets and + inside the call and inside literals do not split.
        ("'a+b' + shell_quote(f(x, (y + 1))) + '''c'''", ["a+b", None, "c"]),
        # Escapes are read as CEL reads them: \x22 is a double quote.
        ("'\\x22' + shell_quote(x)", ['"', None]),
        ("r'a\\' + shell_quote(x)", ["a\\", None]),
        ("'a' + // a comment + here\n shell_quote(x)", ["a", None]),
        ("'echo ' + params.x", None),
        ("'echo ' + shell_quote(params.x)[0]", None),
        ("('echo ' + shell_quote(params.x))", None),
        ("params.c ? shell_quote(params.x) : 'x'", None),
        ("b'echo' + shell_quote(x)", None),
        ("'echo ' + params.x.shell_quote()", None),
    ],
)
def test_quoted_concatenation(source, parts):
    assert quoted_concatenation(source) == parts


@pytest.mark.parametrize(
    ("parts", "fragment"),
    [
        (["echo ", None], None),
        (["cp ${MAESTRO_WORK_DIR}/a ", None, " && ls -l ", None], None),
        (["echo --name=", None, "; echo done"], None),
        (["X=1 echo ", None, " > out.txt"], None),
        (["echo '", None], "inside '...'"),
        (['echo "', None, '"'], 'inside "..."'),
        (["echo $'", None], "inside $'...'"),
        (["echo `", None], "inside `...`"),
        (['echo "$(echo "', None], 'after a $(...) or `...` opened inside "..."'),
        (["echo # ", None], "in a # comment"),
        (["echo \\", None], "right after a backslash"),
        (["echo $", None], "right after $"),
        (["cat <<EOF\n", None, "\nEOF"], "here-document"),
        ([None, " arg"], "where a command name goes"),
        (["echo a; ", None], "where a command name goes"),
        (["X=1 ", None], "where a command name goes"),
        (["if true; then ", None], "where a command name goes"),
        (["eval ", None], "an argument of `eval`"),
        (["/bin/bash -c ", None], "an argument of `bash`"),
        (["find . | xargs ", None], "an argument of `xargs`"),
        (["bash script.sh ", None], None),
        # A closed quote or comment is plain again.
        (["echo 'a' \"b\" # c\necho ", None], None),
    ],
)
def test_quoting_context(parts, fragment):
    problem = quoting_context_problem(parts)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem, problem


@pytest.mark.parametrize(
    ("command", "index"),
    [
        (["echo", "x"], None),
        (["sh", "-c", "script", "arg0", "arg1"], 2),
        (["/usr/bin/bash", "-e", "-o", "pipefail", "-c", "script"], 5),
        (["bash", "-lc", "script"], 2),
        (["sh", "script.sh", "arg"], 1),
        (["sh", "--", "script.sh"], 2),
        (["sh", "-e"], 1),
        (["zsh", {"expr": "params.x"}, "y"], 1),
    ],
)
def test_shell_script_index(command, index):
    assert shell_script_index(command) == index


def test_numbers_in_argv_are_arguments():
    assert ShellParams.model_validate({"command": ["sleep", 2, 0.5]}).command == [
        "sleep",
        "2",
        "0.5",
    ]
    with pytest.raises(ValueError, match="valid string"):
        ShellParams.model_validate({"command": ["echo", True]})
