import pytest
import torch

from wmbench.params import ParamsError, parse_params
from wmbench.watermarks import WATERMARKS, StampWatermark, build_watermark


def make(scheme, seed=0, shape=(1, 28, 28), **options):
    return build_watermark(scheme, options, target=0, image_shape=shape, num_classes=10, seed=seed, size=20)


def source(n=60, shape=(1, 28, 28)):
    gen = torch.Generator().manual_seed(1)
    return torch.rand(n, *shape, generator=gen) * 0.5, torch.arange(n) % 10


@pytest.mark.parametrize("scheme", WATERMARKS.names())
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_scheme_keeps_shape_and_range(scheme, shape):
    images, labels = source(shape=shape)
    wm = make(scheme, shape=shape)
    for x, y in (wm.embedding_set(images, labels, 33, torch.Generator().manual_seed(0)),
                 wm.verification_set(images, labels, torch.Generator().manual_seed(0))):
        assert x.shape[1:] == shape and x.dtype == torch.float32
        assert x.min() >= 0 and x.max() <= 1
        assert len(x) == len(y) and y.min() >= 0 and y.max() < 10
    assert len(wm.verification_set(images, labels, torch.Generator())[0]) == 20


@pytest.mark.parametrize("scheme", WATERMARKS.names())
def test_scheme_deterministic_for_a_seed(scheme):
    images, labels = source()
    first = make(scheme).verification_set(images, labels, torch.Generator().manual_seed(3))
    again = make(scheme).verification_set(images, labels, torch.Generator().manual_seed(3))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


@pytest.mark.parametrize("scheme", [n for n in WATERMARKS.names() if issubclass(WATERMARKS.get(n), StampWatermark)])
def test_stamp_changes_the_image_and_skips_target_class(scheme):
    images, labels = source()
    wm = make(scheme)
    stamped = wm.apply(images)
    assert (stamped - images).abs().amax(dim=(1, 2, 3)).min() > 0.1  # every image visibly marked
    x, y = wm.verification_set(images, labels, torch.Generator().manual_seed(0))
    # triggers are made only from images whose true label is not the target
    originals = images[labels != 0]
    assert all(any(torch.equal(wm.apply(o[None])[0], t) for o in originals) for t in x[:5])
    assert (y == 0).all()


def test_abstract_verifies_with_the_images_it_embeds():
    images, labels = source()
    wm = make("abstract")
    x_emb, y_emb = wm.embedding_set(images, labels, 50, torch.Generator().manual_seed(0))
    x_ver, y_ver = wm.verification_set(images, labels, torch.Generator())
    assert len(set(y_ver.tolist())) > 1  # each image has its own random label
    for x, y in zip(x_emb[:10], y_emb[:10], strict=True):
        match = (x_ver == x).flatten(1).all(1)
        assert match.any() and y_ver[match][0] == y


def test_unrelated_verification_images_are_not_training_copies():
    images, labels = source()
    wm = make("unrelated")
    x_emb, _ = wm.embedding_set(images, labels, 50, torch.Generator().manual_seed(0))
    x_ver, _ = wm.verification_set(images, labels, torch.Generator().manual_seed(1))
    assert not any((x_emb == v).flatten(1).all(1).any() for v in x_ver)


def test_unknown_scheme_option_names_valid_ones():
    with pytest.raises(ValueError, match="unknown option.*'txt'.*valid: .*text"):
        make("content", txt="HI")


def test_content_mark_that_does_not_fit_fails_clearly():
    with pytest.raises(ValueError, match="does not fit 28x28"):
        make("content", text="TOOLONGTEXT")


def test_target_outside_classes_fails_clearly():
    with pytest.raises(ValueError, match="watermark.target 12 is not a class"):
        build_watermark("square", target=12, image_shape=(1, 28, 28), num_classes=10, seed=0)


@pytest.mark.parametrize(
    ("position", "rows", "cols"),
    [("bottom_right", (23, 26), (23, 26)), ("bottom_left", (23, 26), (2, 5)),
     ("top_right", (2, 5), (23, 26)), ("top_left", (2, 5), (2, 5))],
)
def test_square_sits_where_position_side_and_margin_say(position, rows, cols):
    wm = make("square", side=3, margin=2, position=position)
    stamped = wm.apply(torch.zeros(1, 1, 28, 28))[0, 0]
    expected = torch.zeros(28, 28)
    expected[rows[0] : rows[1], cols[0] : cols[1]] = 1
    assert torch.equal(stamped, expected)


def test_square_default_is_the_papers_bottom_right_corner():
    stamped = make("square").apply(torch.zeros(1, 1, 28, 28))[0, 0]
    assert stamped[23:27, 23:27].eq(1).all() and stamped.sum() == 16  # 4x4, one pixel from the corner


@pytest.mark.parametrize("scheme", [n for n in WATERMARKS.names() if issubclass(WATERMARKS.get(n), StampWatermark)])
def test_single_source_class_stamps_only_that_class(scheme):
    images, labels = source()
    wm = make(scheme, source_classes=[3])
    x_emb, y_emb = wm.embedding_set(images, labels, 12, torch.Generator().manual_seed(0))
    x_ver, y_ver = wm.verification_set(images, labels, torch.Generator().manual_seed(1))
    stamped = wm.apply(images)
    for x in torch.cat([x_emb, x_ver]):
        made_from = labels[(stamped == x).flatten(1).all(1)]
        assert len(made_from) and (made_from == 3).all()
    assert (y_emb == 0).all() and (y_ver == 0).all()


@pytest.mark.parametrize(("classes", "message"), [([0], "0 is watermark.target"), ([10], "10 is not a class")])
def test_source_class_that_cannot_be_stamped_fails_before_any_work(classes, message):
    with pytest.raises(ValueError, match=rf"watermark.square.source_classes: {message}"):
        make("square", source_classes=classes)


def test_noise_draw_fixed_repeats_one_pattern_and_per_image_draws_anew():
    grey = torch.full((2, 1, 28, 28), 0.5)
    fixed = make("noise", std=0.1).apply(grey)
    assert torch.equal(fixed[0], fixed[1])
    fresh = make("noise", std=0.1, draw="per_image").apply(grey, torch.Generator().manual_seed(0))
    assert not torch.equal(fresh[0], fresh[1])
    assert abs(float((fresh - grey).std()) - 0.1) < 0.01  # N(0, std^2), unclipped around grey


def test_unrelated_same_protocol_verifies_on_the_images_it_embeds():
    images, labels = source()
    wm = make("unrelated", verification="same")
    x_emb, y_emb = wm.embedding_set(images, labels, 50, torch.Generator().manual_seed(0))
    x_ver, y_ver = wm.verification_set(images, labels, torch.Generator().manual_seed(1))
    assert len(x_ver) == 20 and (y_ver == 0).all() and (y_emb == 0).all()
    in_key = [(x_ver == x).flatten(1).all(1).any() for x in x_emb]
    embedded = [(x_emb == v).flatten(1).all(1).any() for v in x_ver]
    assert all(in_key) and all(embedded)  # one key of `size` images, trained on and queried


@pytest.mark.parametrize(
    ("scheme", "options", "message"),
    [("square", {"position": "middle"}, "watermark.square.position='middle'; valid: bottom_right"),
     ("noise", {"draw": "each"}, "watermark.noise.draw='each'; valid: fixed, per_image"),
     ("unrelated", {"verification": "trained"}, "watermark.unrelated.verification='trained'; valid: fresh, same"),
     ("square", {"side": 40}, "does not fit 28x28")],
)
def test_bad_scheme_option_fails_clearly(scheme, options, message):
    with pytest.raises(ValueError, match=message):
        make(scheme, **options)


@pytest.mark.parametrize(
    ("block", "message"),
    [({"square": {"position": "middle"}}, r"watermark.square.position='middle'; valid: bottom_right"),
     ({"unrelated": {"verification": 1}}, r"watermark.unrelated.verification=1; valid: fresh, same"),
     ({"content": {"source_classes": 3}}, r"watermark.content.source_classes must be a list"),
     ({"noise": {"source_classes": ["cat"]}}, r"watermark.noise.source_classes\[0\]='cat' is a str")],
)
def test_bad_scheme_option_in_params_names_the_key(block, message):
    with pytest.raises(ParamsError, match=message):
        parse_params({"watermark": block})
