"""The user's language over real HTTP: the real Telegram Application against tests/fake_telegram.py, the
tiny model in the embedded worker. Esther's Telegram speaks Spanish: the whole flow is Spanish from /start;
Jun's speaks Japanese (not supported): English; Lukas chooses German with /language, across a restart."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from bot.app import App
from bot.texts import Language
from engine.settings import Settings
from tests import faces_data as fd
from tests.fake_telegram import FakeTelegram, FakeUser, SentMessage
from tests.test_telegram_flow import button_data, documents, settings_for

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(900)]

ESTHER, JUN, LUKAS, MARTA = 2001, 2002, 2003, 2004
SLOW = 300.0  # seconds for model work on a shared 2-core CPU


def speaking(fake: FakeTelegram, user_id: int, language_code: str) -> FakeUser:
    user = fake.user(user_id)
    user.json["language_code"] = language_code
    return user


@dataclass
class World:
    fake: FakeTelegram
    settings: Settings
    app: App
    es: Language
    consent: SentMessage
    consent_record: dict
    rejected: SentMessage
    summary: SentMessage
    queued: SentMessage
    trained: SentMessage
    style_queued: SentMessage
    results: list[SentMessage]
    status: SentMessage
    receipt: SentMessage


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    fake = FakeTelegram()
    await fake.start()
    settings = settings_for(fake, tmp_path_factory.mktemp("languages"))
    app = await App.create(settings)
    await app.start()
    state: World | None = None
    try:
        es = app.conversation.t["es"]
        esther = speaking(fake, ESTHER, "es")
        user_id = app.engine.pseudonym("telegram", ESTHER)
        await esther.send_text("/start")
        consent = await fake.wait_for_message(ESTHER, "¿Estás de acuerdo?")
        await esther.press(consent, "consent:yes")
        await fake.wait_for_message(ESTHER, "¡Gracias!")
        consent_record = await app.engine.consent(user_id)

        await esther.send_document(b"%PDF-1.4\n1 0 obj << >> endobj\n%%EOF\n", "yo.jpg", "image/jpeg")
        rejected = await fake.wait_for_message(ESTHER, "Foto 1")
        await esther.send_album(list(fd.same_person_photos()))
        summary = await fake.wait_for_message(ESTHER, "Llevas 3", after=rejected.message_id)
        await esther.press(summary, "train")
        queued = await fake.wait_for_message(ESTHER, "Entrenamiento en cola")
        trained = await fake.wait_for_message(ESTHER, "modelo personal está listo", timeout=SLOW)
        await esther.press(trained, button_data(trained, "style:")[0])
        style_queued = await fake.wait_for_message(ESTHER, "en camino")
        await fake.wait_for_message(ESTHER, "⬆️", timeout=SLOW)
        results = documents(fake, ESTHER)

        await esther.send_text("/status")
        status = await fake.wait_for_message(ESTHER, "Lo que se guarda sobre ti")
        await esther.send_text("/forget")
        confirm = await fake.wait_for_message(ESTHER, "¿Continuar?")
        assert confirm.button_texts == ["Sí, borrarlo todo", "Conservar mis datos"]
        await esther.press(confirm, "forget:yes")
        receipt = await fake.wait_for_message(ESTHER, "Todo está borrado")
        state = World(
            fake, settings, app, es, consent, consent_record, rejected, summary, queued, trained,
            style_queued, results, status, receipt,
        )  # fmt: skip
        yield state
    finally:
        await (state.app if state else app).stop()  # the restart test replaces the app
        await fake.stop()


async def test_consent_is_asked_in_the_users_language_and_recorded_with_it(world: World) -> None:
    assert world.consent.text.startswith(world.es.policy_summary("telegram")[:40])
    assert world.es.schedule("telegram") in world.consent.text
    assert world.consent.button_texts == ["✅ Acepto", "No, gracias"]
    assert world.consent_record["language"] == "es"
    assert world.consent_record["policy_version"] == world.es.policy_version
    assert world.es.policy_version != world.app.conversation.t["en"].policy_version


async def test_intake_reasons_and_counts_are_spanish(world: World) -> None:
    assert (
        "❌ Foto 1/1: Esta imagen no tiene un formato compatible. Envía una foto JPEG, PNG, WebP o HEIC."
        in world.rejected.text
    )
    assert "Llevas 0 de al menos 3 fotos." in world.rejected.text
    assert "Envía 3 fotos más." in world.rejected.text
    assert "✅ Foto 1/3: está bien (guardadas: 1)." in world.summary.text
    assert world.summary.button_texts == ["🧠 Entrenar mi modelo"]


async def test_progress_is_spanish(world: World) -> None:
    first = world.queued.edits[0]["text"] if world.queued.edits else world.queued.text
    assert first.startswith("Entrenamiento en cola.")
    assert world.queued.text.startswith("Listo\n") and world.queued.text.endswith("100%")
    original = world.queued.edits[0]["reply_markup"]["inline_keyboard"]  # as first sent, with its button
    assert [button["text"] for row in original for button in row] == ["Detener"]
    asked = world.style_queued.edits[0]["text"] if world.style_queued.edits else world.style_queued.text
    assert asked.startswith("Foto profesional: 2 retratos en camino.")
    assert world.style_queued.text == "Listo\n████████████ 100%"  # edited in place when the portraits came


async def test_styles_and_results_caption_are_spanish(world: World) -> None:
    assert "Foto profesional" in world.trained.button_texts
    assert "Tus fotos se han borrado" in world.trained.text
    assert world.results
    caption = world.results[0].caption.splitlines()
    assert caption[0] == "Foto profesional · Generado por IA con Likeness"
    # main's likeness lines, in Spanish (the tiny model paints no faces, so none reaches the minimum)
    assert caption[1] == "1: no se encontró ninguna cara · 2: no se encontró ninguna cara"
    assert caption[2].startswith("Solo 0 de estos 2 se te parecen tanto como deberían")


async def test_status_is_spanish_with_spanish_dates_and_schedule(world: World) -> None:
    when = world.es.when(world.consent_record["given_at"])
    assert f"• Consentimiento: dado el {when} UTC" in world.status.text
    assert world.es.schedule("telegram") in world.status.text
    assert "• Modelo: 1 modelo, eliminación el " in world.status.text


async def test_the_forget_receipt_is_spanish(world: World) -> None:
    text = world.receipt.text
    assert text.startswith("🗑️ Todo está borrado. Comprobante ")
    assert (
        "• fotos: " in text and "• registros de consentimiento: 1" in text and "• mensajes del chat: " in text
    )
    assert "Envía /start para empezar de nuevo." in text


async def test_an_unsupported_language_falls_back_to_english(world: World) -> None:
    jun = speaking(world.fake, JUN, "ja")
    await jun.send_text("/start")
    reply = await world.fake.wait_for_message(JUN, "Do you agree?")
    assert reply.button_texts == ["✅ I agree", "No thanks"]


async def test_language_switches_survives_a_restart_and_is_forgotten(world: World) -> None:
    fake, lukas = world.fake, speaking(world.fake, LUKAS, "es")
    await lukas.send_text("/language")
    menu = await fake.wait_for_message(LUKAS, "Elige tu idioma")
    names = menu.button_texts
    assert names[0] == "English" and {"Español", "Deutsch", "Русский", "Bahasa Indonesia"} <= set(names)
    await lukas.press(menu, "lang:de")
    await fake.wait_for_message(LUKAS, "Ab jetzt spreche ich Deutsch.")

    await world.app.stop()
    world.app = await App.create(world.settings, models=world.app.worker.models)
    await world.app.start()

    await lukas.send_text("/help")
    help_text = await fake.wait_for_message(LUKAS, "Befehle:")
    assert "/language – deine Sprache wählen" in help_text.text
    await lukas.send_text("/settings")  # not consented yet: the policy comes first, in German
    consent = await fake.wait_for_message(LUKAS, "Bist du einverstanden?")
    await lukas.press(consent, "consent:yes")
    await fake.wait_for_message(LUKAS, "Danke!")
    user_id = world.app.engine.pseudonym("telegram", LUKAS)
    assert (await world.app.engine.consent(user_id))["language"] == "de"

    await lukas.send_text("/settings")
    settings = await fake.wait_for_message(LUKAS, "Wie lange etwas aufbewahrt wird")
    assert settings.button_texts[-1] == "🌐 Sprache"
    await lukas.press(settings, "language")
    menu = await fake.wait_for_message(LUKAS, "Wähle deine Sprache", after=settings.message_id)
    await lukas.press(menu, "lang:en")
    await fake.wait_for_message(LUKAS, "From now on I speak English.")
    await lukas.press(menu, "lang:de")
    done = await fake.wait_for_message(LUKAS, "Ab jetzt spreche ich Deutsch.", after=menu.message_id)

    await lukas.send_text("/forget")
    confirm = await fake.wait_for_message(LUKAS, "Fortfahren?")
    await lukas.press(confirm, "forget:yes")
    await fake.wait_for_message(LUKAS, "Alles ist gelöscht")
    preference = await world.app.engine.language_preference(user_id)
    assert (preference.chosen, preference.known) == (None, False)  # deleted with the row

    await lukas.send_text("/start")  # the platform's language again
    await fake.wait_for_message(LUKAS, "¿Estás de acuerdo?", after=done.message_id)


async def test_consent_records_the_text_that_was_read_not_the_language_at_the_press(world: World) -> None:
    fake, marta = world.fake, speaking(world.fake, MARTA, "es")
    user_id = world.app.engine.pseudonym("telegram", MARTA)
    await marta.send_text("/start")
    spanish = await fake.wait_for_message(MARTA, "¿Estás de acuerdo?")
    await marta.send_text("/language")
    menu = await fake.wait_for_message(MARTA, "Elige tu idioma")
    await marta.press(menu, "lang:de")
    switched = await fake.wait_for_message(MARTA, "Ab jetzt spreche ich Deutsch.")

    stale = "consent:yes-" + "0" * 16  # buttons of a policy text that has changed since
    await marta.forge_callback(stale, spanish.message_id)
    again = await fake.wait_for_message(MARTA, "Bist du einverstanden?", after=switched.message_id)
    assert again.text.startswith(world.app.conversation.t["de"].text("messages", "consent_outdated"))
    assert await world.app.engine.consent(user_id) is None

    await marta.press(spanish, "consent:yes")  # the Spanish text's button, pressed while speaking German
    await fake.wait_for_message(MARTA, "Danke!")
    record = await world.app.engine.consent(user_id)
    assert (record["language"], record["policy_version"]) == ("es", world.es.policy_version)
    assert record["attested"] == world.es.attestation
    assert await world.app.engine.has_consent(user_id, world.app.conversation.t.policy_versions)
