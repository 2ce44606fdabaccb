"""The console front-end: typed lines become the same neutral events, replies are printed and saved."""

import io
from pathlib import Path

from bot.app import App
from bot.console import ConsoleFrontend, terminal_language
from bot.events import Button, ButtonPress, Command, PhotoMessage, Reply, TextMessage
from tests.tiny_settings import tiny_settings


def make(tmp_path: Path) -> tuple[ConsoleFrontend, list[str]]:
    printed: list[str] = []
    return ConsoleFrontend(tmp_path / "out", write=printed.append, language="C.UTF-8"), printed


async def test_lines_become_events(tmp_path):
    console, printed = make(tmp_path)
    photo = tmp_path / "me.jpg"
    photo.write_bytes(b"\xff\xd8\xff fake jpeg")
    assert console.parse("/start") == Command(console.parse("/start").chat, "start", "")
    assert console.parse("   ") is None
    assert isinstance(console.parse("hello"), TextMessage)
    event = console.parse(f"photo {photo} {tmp_path / 'missing.jpg'}")
    assert isinstance(event, PhotoMessage) and len(event.photos) == 1
    assert event.photos[0].size == photo.stat().st_size and event.photos[0].name == "me.jpg"
    assert await event.photos[0].download() == photo.read_bytes()
    assert printed == [f"   no such file: {tmp_path / 'missing.jpg'}"]
    assert console.parse(f"photo {tmp_path / 'missing.jpg'}") is None  # nothing to send
    assert event.chat.private


async def test_buttons_are_numbered_and_pressed_by_number(tmp_path):
    console, printed = make(tmp_path)
    await console.send(
        console.parse("/x").chat,
        Reply("Agree?", buttons=((Button("Yes", "consent:yes"), Button("No", "consent:no")),)),
    )
    assert "[1] Yes" in printed[-1] and "[2] No" in printed[-1]
    press = console.parse("2")
    assert isinstance(press, ButtonPress) and press.data == "consent:no"
    assert isinstance(console.parse("3"), TextMessage)  # no such button: just text


async def test_images_and_files_are_saved_to_the_output_folder(tmp_path):
    console, printed = make(tmp_path)
    ids = await console.send(
        console.parse("/x").chat,
        Reply("Done", images=(b"png-bytes",), image_names=("a.png",), files=(("data.json", b"{}"),)),
    )
    assert ids == ["1"]
    assert (tmp_path / "out" / "a.png").read_bytes() == b"png-bytes"
    assert (tmp_path / "out" / "data.json").read_bytes() == b"{}"
    assert "saved" in printed[-1]


async def test_a_failing_event_is_apologised_for_and_the_console_keeps_reading(tmp_path, monkeypatch):
    console, printed = make(tmp_path)
    app = await App.create(tiny_settings(tmp_path / "data"), console=console, with_worker=False)
    try:

        async def broken(event):
            raise RuntimeError("boom")

        monkeypatch.setattr(app.conversation, "handle", broken)
        lines = iter(["/start\n", 'photo "unclosed\n', "quit\n"])
        monkeypatch.setattr("sys.stdin.readline", lambda: next(lines))
        quit_called = []
        console.on_quit = lambda: quit_called.append(True)
        await console._read_loop()
    finally:
        await app.stop()
    assert any(app.conversation.t("internal_error") in line for line in printed)  # the shared dispatch
    assert any("cannot read that line (ValueError)" in line for line in printed)
    assert quit_called == [True]  # the loop survived both and read the next line


def test_the_terminal_language_is_read_like_the_c_library_does():
    assert terminal_language({"LANG": "pt_BR.UTF-8"}) == "pt_BR.UTF-8"
    assert terminal_language({"LANG": "pt_BR.UTF-8", "LC_MESSAGES": "de_DE.UTF-8"}) == "de_DE.UTF-8"
    assert terminal_language({"LANG": "pt_BR.UTF-8", "LC_ALL": "uk_UA.UTF-8"}) == "uk_UA.UTF-8"
    assert terminal_language({}) == ""
    console = ConsoleFrontend(Path("."), language="es_ES.UTF-8")
    assert console.parse("/start").chat.language == "es_ES.UTF-8"


async def test_a_person_at_a_terminal_sees_an_input_prompt(tmp_path, monkeypatch, capsys):
    console, _ = make(tmp_path)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    events = []

    class Recorder:
        async def dispatch(self, event):
            events.append(event)

    monkeypatch.setattr("sys.stdin", Terminal("/help\nquit\n"))
    console.conversation = Recorder()
    await console._read_loop()
    assert capsys.readouterr().out.count("> ") == 2  # before /help and before quit
    assert [e.name for e in events] == ["help"]
