"""The pixel model (utils/pixelmodel.py): exact integer tables, round trips of
regions in both scan directions on an interleaved message, decoding that
reads only known pixels, the cost it reports, and predictions that use the
right neighbours."""
import numpy as np
import pytest

from utils import ans, pixelmodel

PRECISION = ans.DEFAULT_PRECISION


def smooth_image(h, w, channels=3, seed=0):
    """A smooth colour image with a little noise, mostly shared by the
    channels (what the model is for)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    base = 120 + 60 * np.sin(x / 9.0) * np.cos(y / 13.0) + rng.normal(0, 1.5, (h, w))
    planes = [base + 10 * k + rng.normal(0, 0.5, (h, w)) for k in range(channels)]
    return np.clip(np.stack(planes, axis=2), 0, 255).astype(np.uint8)


def test_tables_are_exact_integer_distributions():
    tables = pixelmodel.cumulative_tables(PRECISION)
    assert tables.shape == (3, len(pixelmodel.ACTIVITY_EDGES), 256, 257) and tables.dtype == np.int64
    freq = np.diff(tables, axis=-1)
    assert (tables[..., 0] == 0).all() and (tables[..., -1] == 1 << PRECISION).all()
    assert freq.min() >= 1 << (PRECISION - pixelmodel.FLOOR_BITS)
    # The mode sits at the prediction, and mass falls off with the distance.
    assert (freq.argmax(axis=-1) == np.arange(256)).all()
    row = freq[0, 3, 100]
    assert (np.diff(row[100:]) <= 0).all() and (np.diff(row[:101]) >= 0).all()
    # Integer recursion, checked against exact Python integers.
    theta = pixelmodel.THETA[1][5]
    w = [1 << 30]
    for _ in range(255):
        w.append(w[-1] * theta // (1 << 16))
    assert pixelmodel._geometric_weights(theta).tolist() == w


def _regions(h, w, block):
    """The codec's uses: the strips of partial blocks (forward scan); the
    first complete block, whose right and lower neighbours are known
    (reverse); the last complete block, whose right and lower neighbours are
    strips the decoder has not decoded yet (reverse, nothing known)."""
    hc, wc = h // block * block, w // block * block
    strips = np.ones((h, w), bool)
    strips[:hc, :wc] = False
    first = np.zeros((h, w), bool)
    first[:block, :block] = True
    known_after = ~strips & ~first
    last = np.zeros((h, w), bool)
    last[hc - block:hc, wc - block:wc] = True
    return [(strips, ~strips, False), (first, known_after, True), (last, np.zeros((h, w), bool), True)]


@pytest.mark.parametrize("channels", [3, 1])
def test_round_trip_both_directions_with_garbage_in_unknown_pixels(channels):
    """Decoding reproduces the region bit for bit although every pixel the
    decoder does not know yet holds garbage: the context never reads them."""
    image = smooth_image(45, 70, channels)
    for region, known, reverse in _regions(45, 70, 16):
        msg = ans.InterleavedMessage.empty(32, PRECISION)
        bits = pixelmodel.push_region(msg, image, known, region, reverse)
        assert abs(msg.bits() - 32 * 33 - bits) < 32 * 32 + 64      # heads aside, the cost reported
        canvas = np.random.default_rng(1).integers(0, 256, image.shape, dtype=np.uint8)
        canvas[known] = image[known]
        state = known.copy()
        pixelmodel.pop_region(msg, canvas, state, region, reverse)
        assert np.array_equal(state, known | region)
        assert np.array_equal(canvas[state], image[state])
        assert msg.stack_words() == 0                               # everything was read back
        assert bits < 4 * region.sum() * channels                   # smooth: well under 8 bits/dim


def test_region_bits_matches_push_and_is_much_less_than_raw():
    image = smooth_image(64, 64)
    known = np.zeros((64, 64), bool)
    region = ~known
    msg = ans.InterleavedMessage.empty(1, PRECISION)
    pushed = pixelmodel.push_region(msg, image, known, region)
    assert pushed == pixelmodel.region_bits(image, known, region)
    assert abs((msg.bits() - 64) - pushed) < 64            # one lane: within a word of the information
    assert pushed < 3.5 * image.size


def test_prediction_uses_left_upper_and_upper_left_neighbours():
    """MED on a vertical edge, a horizontal edge and a slope; channel 1 adds
    channel 0's error; an unknown neighbour is not used."""
    img = np.zeros((2, 2, 2), np.int64)
    available = np.ones((2, 2), bool)
    ys, xs = np.array([1]), np.array([1])

    def pred(a, b, c, channel=0, error=None, avail=available):
        img[1, 0, channel], img[0, 1, channel], img[0, 0, channel] = a, b, c
        return pixelmodel.predict(img, avail, ys, xs, channel, error)

    assert pred(10, 200, 10)[0][0] == 200          # c = left: vertical edge, take up
    assert pred(200, 10, 10)[0][0] == 200          # c = up: horizontal edge, take left
    assert pred(50, 60, 55)[0][0] == 55            # plane: a + b - c
    assert pred(50, 60, 55, channel=1, error=np.array([7]))[0][0] == 62
    lonely = available.copy()
    lonely[1, 0] = lonely[0, 0] = False            # only the upper neighbour
    assert pred(10, 77, 30, avail=lonely)[0][0] == 77
    assert pred(10, 77, 30, avail=np.zeros((2, 2), bool))[0][0] == 128


def test_overlapping_known_and_region_is_refused():
    image = smooth_image(8, 8)
    region = np.ones((8, 8), bool)
    with pytest.raises(ValueError, match="overlaps"):
        pixelmodel.push_region(ans.InterleavedMessage.empty(4, PRECISION), image, region, region)


def test_fit_script_recovers_a_sharper_law_for_smoother_photos(tmp_path, capsys):
    """scripts/fit_pixel_model.py prints a THETA literal of the module's
    shape; a smoother photo set gets smaller thetas (narrower laws) in the
    flat buckets; no photos is a one-line error."""
    import ast
    from PIL import Image
    from scripts import fit_pixel_model

    def fit(noise):
        folder = tmp_path / f"n{noise}"
        folder.mkdir()
        for seed in range(2):
            image = smooth_image(40, 40, seed=seed).astype(float)
            image += np.random.default_rng(seed).normal(0, noise, image.shape)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(folder / f"{seed}.png")
        assert fit_pixel_model.main([str(folder)]) == 0
        out = capsys.readouterr().out
        theta = ast.literal_eval(out[out.index("THETA = ") + len("THETA = "):])
        assert len(theta) == 3 and all(len(row) == len(pixelmodel.ACTIVITY_EDGES) for row in theta)
        assert all(0 < t < 1 << pixelmodel.THETA_BITS for row in theta for t in row)
        return theta

    assert fit(0.3)[0][4] < fit(4.0)[0][4]
    assert fit_pixel_model.main([str(tmp_path / "nothing")]) == 2
    assert capsys.readouterr().err.strip() == "error: no PNG files in the given folders"
