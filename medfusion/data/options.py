"""Range checks of the datamodules' options, run before any file is read: a :class:`ConfigError` naming the
option as the CLI spells it (``data.batch_size``), its value and what it accepts."""

from __future__ import annotations

from medfusion.data.demo import DEMO_CLASSES, MIN_CLASS_COUNT, MIN_IMAGE_SIZE
from medfusion.data.errors import check_option


def check_data_options(
    *,
    batch_size: int,
    image_size: int,
    max_length: int,
    vocab_size: int,
    num_workers: int,
    val_ratio: float,
    test_ratio: float,
    csv_sep: str,
    train_fraction: float = 1.0,
) -> None:
    """A :class:`ConfigError` for the first option out of its range, before any file is read."""
    check_loader_options(batch_size=batch_size, num_workers=num_workers)
    for name, value, low in (
        ("image_size", image_size, 1),
        ("max_length", max_length, 1),
        ("vocab_size", vocab_size, 1),
    ):
        check_option(f"data.{name}", value, _is_int(value) and value >= low, f"an integer >= {low}")
    for name, value in (("val_ratio", val_ratio), ("test_ratio", test_ratio)):
        check_option(f"data.{name}", value, _is_number(value) and 0 <= value < 1, "a fraction in [0, 1)")
    check_option(
        "data.test_ratio",
        test_ratio,
        val_ratio + test_ratio < 1,
        f"below 1 - data.val_ratio = {1 - val_ratio:g} (val_ratio + test_ratio < 1 leaves rows for training)",
    )
    check_option(
        "data.train_fraction", train_fraction, _is_number(train_fraction) and 0 < train_fraction <= 1, "in (0, 1]"
    )
    check_option(
        "data.csv_sep",
        csv_sep,
        isinstance(csv_sep, str) and len(csv_sep) == 1 and csv_sep not in '"\r\n',
        "one character other than a quote or line break, e.g. ',' ';' '\\t' '|'",
    )


def check_loader_options(*, batch_size: int, num_workers: int) -> None:
    """A :class:`ConfigError` for ``batch_size`` < 1 or ``num_workers`` < 0."""
    for name, value, low in (("batch_size", batch_size, 1), ("num_workers", num_workers, 0)):
        check_option(f"data.{name}", value, _is_int(value) and value >= low, f"an integer >= {low}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_demo_options(num_samples: int, demo_image_size: int, long_tail: bool, views: int = 1) -> None:
    """The demo generator's minimums: a sample per class (``MIN_CLASS_COUNT`` with ``long_tail``), 16 px images,
    one or two views."""
    check_option("data.views", views, views in (1, 2), "1 or 2")
    fewest = len(DEMO_CLASSES) * (MIN_CLASS_COUNT if long_tail else 1)
    check_option(
        "data.num_samples",
        num_samples,
        _is_int(num_samples) and num_samples >= fewest,
        f"an integer >= {fewest} (at least {fewest // len(DEMO_CLASSES)} per class"
        + (" with data.long_tail)" if long_tail else ")"),
    )
    check_option(
        "data.demo_image_size",
        demo_image_size,
        _is_int(demo_image_size) and demo_image_size >= MIN_IMAGE_SIZE,
        f"an integer >= {MIN_IMAGE_SIZE}",
    )
