"""benchmarks/RESULTS.md: each benchmark owns marked sections (`<!-- name -->` ... `<!-- /name -->`) it replaces."""
import os
import re

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md")


def replace_section(marker, lines, path=RESULTS, header=""):
    """Replace the section between `<!-- marker -->` and `<!-- /marker -->` of `path` by `lines` (which hold both
    markers), or append it; a missing file starts with `header`."""
    new = "\n".join(lines)
    text = open(path).read() if os.path.exists(path) else header
    pattern = re.compile(rf"<!-- {re.escape(marker)} -->.*?<!-- /{re.escape(marker)} -->", re.S)
    text = pattern.sub(lambda m: new, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + new + "\n"
    with open(path, "w") as f:
        f.write(text)
