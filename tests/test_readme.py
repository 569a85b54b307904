"""The README's quickstart test command is what CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command_verbatim():
    readme = (ROOT / "README.md").read_text()
    commands = re.findall(r"```bash\n(.*?)\n```", readme.split("## Quickstart")[1].split("\n## ")[0], re.S)
    assert len(commands) == 2, "the quickstart has exactly two commands"
    test_command = commands[1]
    assert "pytest" in test_command
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()


def test_the_api_tour_in_the_readme_runs():
    readme = (ROOT / "README.md").read_text()
    tour = re.findall(r"```python\n(.*?)\n```", readme.split("## A short tour of the API")[1], re.S)[0]
    exec(compile(tour, "README.md", "exec"), {})


def test_gradcheck_docstring_examples():
    import doctest
    import sys

    import minigen  # noqa: F401  (minigen.gradcheck is the function; the module is in sys.modules)
    failures, tried = doctest.testmod(sys.modules["minigen.gradcheck"])
    assert tried > 0 and failures == 0
