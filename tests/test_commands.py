"""Commands not covered by the platform tests: /cancel, /styles and /train edge cases, /settings."""

from tests.retention_fixtures import Harness, make_settings


async def test_cancel_stops_queued_work_and_says_so(tmp_path):
    bot = await Harness.open(make_settings(tmp_path))
    try:
        alice = bot.user("1001")
        assert "Nothing is running" in (await bot.command(alice, "cancel")).text
        await bot.onboard(alice)
        await bot.press(alice, "train")  # the worker is not running: the job stays queued
        assert await bot.count("jobs", alice, "state='queued'") == 1
        assert "Stopped 1" in (await bot.command(alice, "cancel")).text
        assert await bot.count("jobs", alice, "state='cancelled'") == 1
        assert await bot.run_jobs() == 0  # nothing left to run
    finally:
        await bot.close()


async def test_train_and_styles_explain_what_is_missing(tmp_path):
    bot = await Harness.open(make_settings(tmp_path))
    try:
        alice = bot.user("1001")
        await bot.consent(alice)
        assert "I need at least 3 photos first; I have 0" in (await bot.command(alice, "train")).text
        assert "no trained model yet" in (await bot.command(alice, "styles")).text
        assert await bot.count("jobs", alice) == 0
        await bot.onboard(alice)
        await bot.press(alice, "train")
        assert "already being trained" in (await bot.press(alice, "train")).text
        assert await bot.count("jobs", alice) == 1
    finally:
        await bot.close()


async def test_settings_offer_only_choices_within_the_operator_cap(tmp_path):
    bot = await Harness.open(make_settings(tmp_path, LIKENESS_RETENTION_MODEL="1d"))
    try:
        alice = bot.user("1001")
        await bot.consent(alice)
        reply = await bot.command(alice, "settings")
        data = [button.data for row in reply.buttons for button in row]
        assert "set:model_week" not in data  # above the operator's 1 day
        assert {"set:model_now", "set:model_day", "set:messages_off", "set:messages_day"} <= set(data)
        assert "Saved" in (await bot.press(alice, "set:model_now")).text
        assert await bot.engine.model_retention(alice.id) == 3600.0
    finally:
        await bot.close()
