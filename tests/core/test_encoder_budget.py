"""The scheduler's encoder budget: a step encodes at most max_num_batched_tokens image tokens (its first image
always fits), a chunk stops before an image the step cannot pay for, and an image already encoded for a
running request costs nothing again."""

import random

from pagoda.core.request import EngineCoreRequest
from pagoda.multimodal.inputs import ImageInput
from pagoda.sampling_params import SamplingParams
from tests.core.conftest import check_pool_invariants, fake_step, make_scheduler


def _request(request_id, images, prompt_len=40, max_tokens=3):
    """`images`: (offset, length, content key) per image; the prompt's other tokens are text."""
    mm = [ImageInput(pixel_values=None, offset=o, length=n, content_hash=key.encode()) for o, n, key in images]
    params = SamplingParams(max_tokens=max_tokens, ignore_eos=True)
    return EngineCoreRequest(request_id, list(range(1, prompt_len + 1)), params, None, mm_inputs=mm)


def test_chunks_stop_before_images_the_step_cannot_encode():
    s = make_scheduler(budget=20, max_model_len=128, num_blocks=64)
    s.add_request(_request("a", [(2, 16, "x"), (20, 16, "y")]))
    sched, _ = fake_step(s, random.Random(0))
    assert sched.num_scheduled_tokens == {"a": 20}  # image x (16 of 20) then text up to image y
    sched, _ = fake_step(s, random.Random(0))
    assert sched.num_scheduled_tokens == {"a": 20}  # image y is this step's first image
    check_pool_invariants(s)


def test_a_step_first_image_fits_even_when_larger_than_the_budget():
    s = make_scheduler(budget=8, max_model_len=128, num_blocks=64)
    s.add_request(_request("a", [(0, 12, "big")], prompt_len=20))
    sched, _ = fake_step(s, random.Random(0))
    assert sched.num_scheduled_tokens == {"a": 8}  # the token budget still cuts the chunk; the image is charged
    sched, _ = fake_step(s, random.Random(0))
    assert sched.num_scheduled_tokens == {"a": 8}  # already encoded: the rest of it costs nothing


def test_an_encoded_image_is_free_for_others_until_its_holders_leave():
    s = make_scheduler(budget=20, max_model_len=128, num_blocks=64)
    s.add_request(_request("a", [(0, 16, "same")], prompt_len=18, max_tokens=1))
    s.add_request(_request("b", [(0, 16, "same")], prompt_len=18, max_tokens=1))
    sched, _ = fake_step(s, random.Random(0))
    # a: 18 tokens (image 16) uses the token budget first; b gets the 2 left, its image is encoded already
    assert sched.num_scheduled_tokens == {"a": 18, "b": 2}
    while s.has_unfinished_requests():
        fake_step(s, random.Random(0))
    assert s.encoder.holders == {}  # released when both finished
    s.add_request(_request("c", [(0, 16, "other"), (16, 16, "third")], prompt_len=40))
    sched, _ = fake_step(s, random.Random(0))
    assert sched.num_scheduled_tokens == {"c": 16}  # "third" would exceed the 20 image tokens of this step
