"""Priors for job durations, before any is measured: from model family, training steps and device."""

from __future__ import annotations

from pathlib import Path

from bot.texts import Texts
from engine.clock import FakeClock
from engine.estimates import DEFAULT_TRAIN_STEPS, model_family, prior_seconds
from engine.facade import Engine
from tests.tiny_settings import tiny_settings


def engine_settings(tmp_path: Path, **env: str):
    return tiny_settings(tmp_path, **env).engine


def test_family_is_read_from_the_model_setting():
    assert model_family("tiny") == model_family("tiny-sdxl") == "tiny"
    assert model_family("stabilityai/stable-diffusion-xl-base-1.0") == "sdxl"
    assert model_family("/models/juggernautXL_v9.safetensors") == "sdxl"
    assert model_family("stable-diffusion-v1-5/stable-diffusion-v1-5") == "sd15"


def test_priors_follow_steps_family_and_device(tmp_path):
    tiny = engine_settings(tmp_path, LIKENESS_ENGINE_TRAIN_STEPS="5")
    assert prior_seconds("train", tiny) < 10  # the console's tiny training: seconds, not "10 minutes"
    assert prior_seconds("generate", tiny) < 20
    more_steps = engine_settings(tmp_path, LIKENESS_ENGINE_TRAIN_STEPS="500")
    assert prior_seconds("train", more_steps) > prior_seconds("train", tiny)
    xl_gpu = engine_settings(
        tmp_path,
        LIKENESS_ENGINE_MODEL="stabilityai/stable-diffusion-xl-base-1.0",
        LIKENESS_ENGINE_DEVICE="cuda",
        LIKENESS_ENGINE_TRAIN_STEPS="0",  # the family default
    )
    assert 200 < prior_seconds("train", xl_gpu) < 600  # 500 steps at the measured 1.73 steps/s
    xl_cpu = engine_settings(
        tmp_path,
        LIKENESS_ENGINE_MODEL="stabilityai/stable-diffusion-xl-base-1.0",
        LIKENESS_ENGINE_DEVICE="cpu",
        LIKENESS_ENGINE_TRAIN_STEPS="0",
    )
    assert prior_seconds("train", xl_cpu) > 10 * prior_seconds("train", xl_gpu)
    # A clip (20 frames at 25 steps) costs more than a request of a few stills, on every configuration.
    for settings in (tiny, xl_gpu, xl_cpu):
        assert prior_seconds("video", settings) > prior_seconds("generate", settings)


def test_default_steps_match_the_trainer():
    from engine.ml.train import TrainConfig

    assert TrainConfig().steps == DEFAULT_TRAIN_STEPS


async def test_the_engine_answers_with_its_configuration_s_estimate(tmp_path):
    engine = await Engine.open(tiny_settings(tmp_path))
    try:
        user = engine.pseudonym("console", "someone")
        await engine.give_consent(user, "console", {"chat_id": "c", "user_id": "u"}, "1", "self")
        job_id = await engine.queue.enqueue(user, "train")
        position = await engine.job_position(user, job_id)
        assert position.estimated
        assert position.eta_seconds == prior_seconds("train", engine.settings.engine)
    finally:
        await engine.close()


async def test_a_clip_s_eta_comes_from_measured_clips_not_from_still_portraits(tmp_path):
    clock = FakeClock()
    engine = await Engine.open(tiny_settings(tmp_path), clock)
    english = Texts(engine.settings)["en"]
    try:
        user = engine.pseudonym("console", "someone")
        await engine.give_consent(user, "console", {"chat_id": "c", "user_id": "u"}, "1", "self")
        clip = next(key for key, preset in engine.presets.items() if preset.video)

        async def run(kind: str, seconds: float) -> None:
            """One job of `kind`, taking `seconds` on the clock: its duration is measured."""
            await engine.queue.enqueue(user, kind, {"preset": clip})
            job = await engine.queue.claim("w")
            clock.advance(seconds)
            assert await engine.queue.finish(job)

        first = await engine.queue.enqueue(user, "video", {"preset": clip})
        position = await engine.job_position(user, first)
        assert position.estimated and position.eta_seconds == prior_seconds("video", engine.settings.engine)
        await engine.queue.cancel(first, user)

        await run("video", 240.0)
        await run("video", 360.0)
        await run("generate", 20.0)  # still portraits are quick: they must not shorten a clip's ETA
        job_id = await engine.queue.enqueue(user, "video", {"preset": clip})
        position = await engine.job_position(user, job_id)
        assert (position.ahead, position.eta_seconds, position.estimated) == (0, 300.0, False)
        assert english.eta(position.eta_seconds, position.estimated) == "5 minutes"

        # Behind a queued still request: its measured 20 s, then the clip's measured 300 s.
        other = engine.pseudonym("console", "another")
        await engine.give_consent(other, "console", {"chat_id": "d", "user_id": "v"}, "1", "self")
        await engine.queue.cancel(job_id, user)
        await engine.queue.enqueue(other, "generate", {"preset": clip})
        job_id = await engine.queue.enqueue(user, "video", {"preset": clip})
        position = await engine.job_position(user, job_id)
        assert (position.ahead, position.eta_seconds, position.estimated) == (1, 320.0, False)
    finally:
        await engine.close()
