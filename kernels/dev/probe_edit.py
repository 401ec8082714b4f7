# kernels/dev/probe_edit.py: the line edits the *_probe.py scripts make to a CUDA source (a
# list of its lines, edited in place): each needle is whole lines that must occur exactly once
# from `start` on, so a probe that no longer fits the source fails on the line that moved.


def find(lines, text, start=0):
    """The index of the one line equal to text from index start on."""
    hits = [i for i, l in enumerate(lines) if l == text and i >= start]
    assert len(hits) == 1, (text, len(hits))
    return hits[0]


def at(lines, line, new, after=True, start=0):
    """Inserts the lines new after (or before) the one line equal to line from index start on;
    returns where they went."""
    i = find(lines, line, start) + (1 if after else 0)
    lines[i:i] = new.split("\n")
    return i


def replace(lines, old, new, start=0):
    """Replaces the run of whole lines old (one string, several lines) found once from start on."""
    o = old.split("\n")
    hits = [i for i in range(start, len(lines) - len(o) + 1) if lines[i:i + len(o)] == o]
    assert len(hits) == 1, (old, len(hits))
    lines[hits[0]:hits[0] + len(o)] = new.split("\n")
