"""The command line's own promises: every verb's --help has examples, malformed command lines and library
errors are one line with exit 2, and a library error names the flag the user typed."""

from __future__ import annotations

import pytest

from dynadnn.cli import COMMANDS, build_parser, main

VERBS = [c if c != "plot" else "plot-front" for c in COMMANDS]


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help_with_an_example(verb, capsys):
    assert main([verb, "--help"]) == 0
    out = capsys.readouterr().out
    assert f"dynadnn {verb}" in out and "examples:" in out
    example = out.split("examples:")[1].strip().splitlines()[0].strip()
    assert example.startswith(("dynadnn ", "torchrun "))


@pytest.mark.parametrize("argv, named", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["profile", "zoo:animals", "--runs", "nan", "--out", "x"], "--runs: invalid int value: 'nan'"),
    (["search", "zoo:animals"], "--out"),
    (["run", "--fps", "fast", "random:tiny", "--out", "x"], "--fps"),
])
def test_a_malformed_command_line_is_one_line(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dynadnn: error:") and "\n" not in err and named in err


def test_a_library_error_names_the_flag():
    from dynadnn.cli import as_flags

    parser = build_parser()
    assert as_flags("eval_images: expected a positive number", parser, "search").startswith("--eval-images:")
    assert as_flags("calib_images: expected >= 1", parser, "run").startswith("--calib-images:")
    assert as_flags("nosuch: x", parser, "search") == "nosuch: x"
    assert as_flags("/a/file.json: field 'x'", parser, "search") == "/a/file.json: field 'x'"
