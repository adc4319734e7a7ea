"""medfusion.runs.progress: every item passes through; a bar on a TTY, a bounded number of plain lines without one,
one summary line at the end, nothing on ranks other than zero or with ``MEDFUSION_PROGRESS=off``."""

from __future__ import annotations

import io
import re

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from medfusion.runs.progress import is_rank_zero, timed, track

SUMMARY = re.compile(r"^verifying images: 1,000 images in \d+\.\d s \([\d,]+ images/s\)$")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PERCENT = re.compile(r"^verifying images: [\d,]+/1,000 images \((\d+)%\), \d+ s elapsed, ETA \d+ s$")


class TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def rank_zero_auto(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank zero, no override, a terminal rich draws on and wide enough for every column, whatever the test run's
    environment says."""
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    monkeypatch.delenv("MEDFUSION_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "120")


def run(items, **kwargs) -> tuple[list, str]:
    stream = kwargs.pop("stream", None) or io.StringIO()
    kwargs.setdefault("description", "verifying images")
    kwargs.setdefault("unit", "images")
    out = list(track(items, stream=stream, **kwargs))
    return out, stream.getvalue()


@pytest.mark.parametrize("stream_type", [io.StringIO, TTY])
def test_yields_every_item_in_order(stream_type: type) -> None:
    items = list(range(57))
    assert run(items, stream=stream_type())[0] == items
    assert run((i for i in items), total=len(items), stream=stream_type())[0] == items
    out, text = run((i for i in items), stream=stream_type(), delay=0)  # unknown total
    assert out == items
    assert "57 images in" in text


def test_plain_lines_without_a_tty() -> None:
    out, text = run(range(1000), delay=0)
    assert out == list(range(1000))
    lines = text.splitlines()
    assert SUMMARY.match(lines[-1]), lines[-1]
    percents = [PERCENT.match(line) for line in lines[:-1]]
    assert all(percents), lines
    assert 1 <= len(percents) <= 10
    assert percents[-1].group(1) == "100"
    assert "\x1b" not in text and "━" not in text


@pytest.mark.parametrize("stream_type", [io.StringIO, TTY])
def test_short_step_prints_nothing(stream_type: type) -> None:
    _, text = run(range(1000), stream=stream_type())  # default delay of 1 s: a fast loop never reaches it
    assert text == ""


def test_sizes_count_units_per_item() -> None:
    chunks = [list(range(100))] * 10
    out, text = run(chunks, total=1000, size=len, delay=0)
    assert out == chunks
    assert SUMMARY.match(text.splitlines()[-1])
    assert PERCENT.match(text.splitlines()[-2]).group(1) == "100"


def test_unknown_total_without_a_tty_prints_only_the_summary() -> None:
    _, text = run((i for i in range(1000)), delay=0)
    assert len(text.splitlines()) == 1
    assert SUMMARY.match(text.splitlines()[0])


def test_empty_iterable_summary() -> None:
    _, text = run([], delay=0)
    assert text == "verifying images: 0 images in 0.0 s (0 images/s)\n"


def test_no_summary_when_asked() -> None:
    _, text = run(range(10), summary=False)
    assert text == ""


def test_bar_on_a_tty() -> None:
    out, text = run(range(1000), stream=TTY(), delay=0)
    assert out == list(range(1000))
    assert "verifying images" in text
    assert "\x1b[" in text and "━" in text  # rich's bar, drawn with control codes
    assert "1000/1000" in text and "images/s" in ANSI.sub("", text)  # the count and rate columns
    summary = ANSI.sub("", text.splitlines()[-1]).lstrip("\r")  # after rich's codes clearing the transient bar
    assert SUMMARY.match(summary), repr(text.splitlines()[-1])
    assert text.endswith(summary + "\n")


def test_environment_forces_lines_on_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDFUSION_PROGRESS", "lines")
    _, text = run(range(1000), stream=TTY(), delay=0)
    assert "\x1b" not in text and "━" not in text
    assert SUMMARY.match(text.splitlines()[-1])
    assert PERCENT.match(text.splitlines()[0])


def test_dumb_terminal_gets_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TERM", "dumb")  # rich cannot redraw there, and would draw nothing
    _, text = run(range(1000), stream=TTY(), delay=0)
    assert "\x1b" not in text
    assert PERCENT.match(text.splitlines()[0]) and SUMMARY.match(text.splitlines()[-1])


def test_environment_forces_bar_without_a_tty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDFUSION_PROGRESS", "bar")
    _, text = run(range(100), delay=0)
    assert "━" in text


def test_stream_without_isatty_is_not_a_tty() -> None:
    class Sink:
        def __init__(self) -> None:
            self.parts: list[str] = []

        def write(self, text: str) -> int:
            self.parts.append(text)
            return len(text)

        def flush(self) -> None:
            pass

    sink = Sink()
    assert list(track(range(5), description="d", stream=sink, delay=0)) == list(range(5))  # type: ignore[arg-type]
    assert "".join(sink.parts).splitlines()[-1].startswith("d: 5 items in ")


@pytest.mark.parametrize("why", ["other rank", "off"])
@pytest.mark.parametrize("stream_type", [io.StringIO, TTY])
def test_other_ranks_and_off_print_nothing(monkeypatch: pytest.MonkeyPatch, stream_type: type, why: str) -> None:
    if why == "other rank":
        monkeypatch.setattr(rank_zero_only, "rank", 1)
        assert not is_rank_zero()
    else:
        monkeypatch.setenv("MEDFUSION_PROGRESS", "off")
    out, text = run(range(1000), stream=stream_type(), delay=0)
    assert out == list(range(1000))
    assert text == ""
    stream = stream_type()
    with timed("training tokenizer", stream=stream, delay=0):
        pass
    assert stream.getvalue() == ""


@pytest.mark.parametrize("stream_type", [io.StringIO, TTY])
def test_stopping_early_writes_no_summary(stream_type: type) -> None:
    stream = stream_type()
    gen = track(range(1000), description="verifying images", unit="images", stream=stream, delay=0)
    for i in gen:
        if i == 500:
            break
    gen.close()
    assert " in " not in stream.getvalue()
    assert "images/s)" not in stream.getvalue()


def test_exception_in_consumer_writes_no_summary() -> None:
    stream = TTY()
    with pytest.raises(RuntimeError):
        for i in track(range(100), description="verifying images", stream=stream):
            if i == 3:
                raise RuntimeError("boom")
    assert "items in" not in stream.getvalue()


def test_default_stream_is_stderr_at_call_time(capsys: pytest.CaptureFixture[str]) -> None:
    assert list(track(range(3), description="tokenizing", unit="texts", delay=0)) == [0, 1, 2]
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("tokenizing: 3 texts in ") and err.endswith(" texts/s)\n")


def test_timed_writes_one_line() -> None:
    stream = io.StringIO()
    with timed("training tokenizer", stream=stream):
        pass
    assert stream.getvalue() == ""  # quicker than the delay
    with timed("training tokenizer", stream=stream, delay=0):
        pass
    assert re.fullmatch(r"training tokenizer: done in \d+\.\d s\n", stream.getvalue())


def test_timed_writes_nothing_when_the_step_raises() -> None:
    stream = io.StringIO()
    with pytest.raises(ValueError), timed("training tokenizer", stream=stream):
        raise ValueError
    assert stream.getvalue() == ""
