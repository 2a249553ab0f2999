"""benchmarks/RESULTS.md: each benchmark owns marked sections (`<!-- name -->` ... `<!-- /name -->`) it replaces.

No project or torch import at module level: bench_vs_repdistiller.py runs RepDistiller's own code in its process.
"""
import datetime
import os
import platform
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


def load_average():
    """The 1, 5 and 15 minute load averages, as text ("n/a" where the system has none)."""
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def cpu_name():
    """The CPU's model name from /proc/cpuinfo, else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            names = re.findall(r"^model name\s*:\s*(.+)$", f.read(), re.M)
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def section_head(marker, title, command, machine_lines, load_start):
    """The opening lines of every benchmark's section: marker, title, command, date, machine and load average."""
    date = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    lines = [f"<!-- {marker} -->", f"## {title}", "", f"Command: `{command}`  ", f"Date: {date}  "]
    lines += [f"{line}  " for line in machine_lines]
    return lines + [f"Load average (1, 5, 15 min): {load_start} at the start, {load_average()} at the end  "]
