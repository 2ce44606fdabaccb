"""`python -m engine`: a standalone worker. Also `rotate-master-key` and `verify FILE...`.

python -m engine                      run a worker (claims jobs until SIGTERM/Ctrl-C)
python -m engine rotate-master-key    re-wrap every data key under a new master key
python -m engine verify FILE...       print which AI-generated marks each image or MP4 clip carries
python -m engine eval PHOTOS_DIR [--holdout K] [--presets a,b] [--runs N] [--steps S]
                                      train on the photos minus K, report the portraits' likeness to the
                                      held-out ones vs the base model (JSON last line; docs/likeness.md)
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

from engine.errors import StartupError, VaultError
from engine.runtime import install_stop_signals, setup_logging
from engine.settings import Settings, SettingsError, load_settings

log = logging.getLogger("engine")


async def run_worker(settings: Settings) -> None:
    from engine.facade import Engine
    from engine.runtime import serve_metrics
    from engine.worker import Worker

    engine = await Engine.open(settings)
    stop = asyncio.Event()
    install_stop_signals(stop)
    worker = Worker(engine)
    await engine.run_due_deadlines()
    metrics = await serve_metrics(engine)
    task = asyncio.create_task(worker.run())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    worker.stop()
    [outcome] = await asyncio.gather(task, return_exceptions=True)
    stopper.cancel()
    if metrics is not None:
        await metrics.stop()
    await engine.close()
    if isinstance(outcome, BaseException):  # e.g. the model could not be loaded: main() says why
        raise outcome
    log.info("worker stopped")


def rotate_master_key(settings: Settings) -> int:
    """Re-wrap every data key under a fresh master key; the old key is not needed afterwards."""
    from engine.vault import encode_master_key, load_or_create_master_key, new_master_key, open_vault

    old = load_or_create_master_key(settings.master_key, settings.data_dir)
    new = new_master_key()
    vault = open_vault(settings, old)
    try:
        count = vault.keys.rotate(new)
    finally:
        vault.close()
    if settings.master_key:
        print(f"Re-wrapped {count} data keys. Set LIKENESS_MASTER_KEY to this new key before the next start:")
        print(encode_master_key(new))
    else:
        path = settings.data_dir / "master.key"
        temp = path.with_suffix(".new")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(encode_master_key(new) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
        print(
            f"Re-wrapped {count} data keys; the new master key is in {path}. Back it up; the old one is void."
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "verify":
        from engine.provenance import verify_main

        return verify_main(argv[1:])
    if argv and argv[0] == "eval":
        from engine.evaluate import main as eval_main

        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        return eval_main(argv[1:])
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"likeness: {error}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        if argv and argv[0] == "rotate-master-key":
            return rotate_master_key(settings)
        if argv and argv[0] not in {"worker"}:
            print(__doc__, file=sys.stderr)
            return 2
        asyncio.run(run_worker(settings))
    except (StartupError, VaultError) as error:  # a model or device that cannot be used: one clear line
        print(f"likeness: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
