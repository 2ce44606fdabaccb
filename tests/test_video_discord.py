"""An animated clip through the Discord front-end: the real discord.py client against tests/fake_discord.py,
the embedded worker on the tiny model with the tiny motion adapter. One press, one DM with the MP4 attached
(the caption and the "Another style" button on the same message); /forget deletes it."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import video_encode
from engine.provenance.video import verify_video
from tests.fake_discord import FakeDiscord
from tests.test_discord_flow import consent, dm_with, eventually, fake, photos, running, upload_and_train
from tests.video_fixtures import CLIP_FRAMES, CLIP_LABEL, SLOW, video_settings, write_presets

__all__ = ["fake", "photos"]  # fixtures shared with test_discord_flow

pytestmark = pytest.mark.timeout(900)


async def test_a_clip_arrives_as_one_dm_attachment_and_forget_deletes_it(
    fake: FakeDiscord, photos: list, tmp_path: Path
) -> None:
    settings = video_settings(
        tmp_path / "data",
        write_presets(tmp_path),
        LIKENESS_DISCORD_TOKEN=fake.token,
        LIKENESS_DISCORD_API_URL=fake.api_url,
    )
    async with running(settings, with_worker=True) as app:
        alex = fake.user(1001)
        await consent(fake, alex)
        await upload_and_train(fake, alex, photos)
        ready = (await fake.wait_for(lambda: dm_with(fake, alex, text="model is ready"), timeout=SLOW))[-1]
        assert "style:clip" in ready.custom_ids
        await alex.press(ready, "style:clip")

        (clip,) = await fake.wait_for(lambda: dm_with(fake, alex, text="AI-generated"), timeout=SLOW)
        assert CLIP_LABEL in clip.content
        assert [a.filename for a in clip.attachments] == ["likeness-clip.mp4"]
        assert clip.custom_ids == ["styles"]  # one message: clip, caption and button together
        assert [m for m in fake.dm_messages(alex.id) if m.attachments] == [clip]
        data = clip.attachments[0].data
        decoded = video_encode.decode_mp4(data)
        assert (len(decoded.frames), decoded.fps, decoded.width, decoded.height) == (
            CLIP_FRAMES,
            8.0,
            512,
            512,
        )
        report = verify_video(data)
        assert report.watermark and report.iptc_xmp

        user_id = app.engine.pseudonym("discord", str(alex.id))
        sent = await eventually(lambda: app.engine.messages(user_id), lambda ids: str(clip.id) in ids)
        await eventually(lambda: app.engine.pending_deliveries("discord"), lambda pending: pending == [])

        await alex.slash("forget")
        confirm = (await fake.wait_for(lambda: dm_with(fake, alex, button="forget:yes")))[-1]
        await alex.press(confirm, "forget:yes")
        await fake.wait_for(lambda: dm_with(fake, alex, text="Everything is deleted"))
        assert fake.message(clip.id).deleted
        assert all(fake.message(int(message_id)).deleted for message_id in sent)
        assert await app.engine.is_known(user_id) is False
