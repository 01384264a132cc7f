"""First imports that cannot race between the app's threads.

The app imports the library lazily so that its page is served in seconds; the first actions
after a start then import torch, scikit-learn, transformers and diffusers from several threads at
once (Gradio's workers, the job thread, the warm-up below). CPython locks each module separately,
and when two threads import parts of one package whose modules import each other it breaks the
would-be deadlock by handing one thread a half-initialised module: "cannot import name 'clone'
from partially initialized module 'sklearn.base'", a failed job the user can do nothing about.

`serialise_imports()` gives each top-level package one re-entrant lock, taken by every first
import of a module in it: a thread that needs a module another thread is still importing waits
until that thread has finished with the whole package, so nobody enters a package half-way. Other
packages are not held up (the server's event loop importing Gradio's optional extras never waits
for torch), and imports of modules already loaded take a fast path without any lock. Where waiting
would close a circle of threads (A holds package P and waits for Q, B holds Q and waits for P:
packages that import each other) or lasts longer than `MAX_WAIT_S`, the import goes ahead
unlocked, as it would without this module.

`warm_up()` imports what the tabs and jobs need, in the order the first page load needs them,
so the first click does not wait for it.
"""

from __future__ import annotations

import builtins
import importlib
import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence

log = logging.getLogger(__name__)

MAX_WAIT_S = 120.0
# What the first page load needs first (the views), then what the jobs need.
WARM_UP_MODULES = (
    "numpy", "PIL.Image", "pandas", "plotly.graph_objects", "torch", "torchvision",
    "diffubias.prepared", "diffubias.plots", "diffubias.evaluation",
    "sklearn.metrics", "diffubias.stages.detect", "diffubias.stages.rescore",
    "transformers", "diffubias.backends", "diffubias.hf_captioners", "diffubias.stages.caption",
    "diffusers", "diffubias.diffusion", "diffubias.stages.generate", "diffubias.stages.debias",
    "pytorch_grad_cam", "diffubias.gradcam", "diffubias.stages.explain", "diffubias.report",
)

_original: dict[str, Callable] = {}


class _PackageLock:
    """A re-entrant lock for the first imports of one top-level package."""

    def __init__(self) -> None:
        self.owner: int | None = None
        self.count = 0


_state = threading.Condition()  # guards every _PackageLock, _waiting and _unlocked
_locks: dict[str, _PackageLock] = {}
_waiting: dict[int, _PackageLock] = {}  # thread id -> the lock it waits for
_unlocked: dict[int, int] = {}  # thread id -> how many of its imports went ahead unlocked


def loaded(name: str) -> bool:
    """Whether module `name` is imported and has finished running its code."""
    module = sys.modules.get(name)
    if module is None:
        return False
    return not getattr(getattr(module, "__spec__", None), "_initializing", False)


def _loaded_with(name: str, fromlist: Sequence[str]) -> bool:
    if not loaded(name):
        return False
    module = sys.modules[name]
    return all(item != "*" and hasattr(module, item) for item in fromlist or ())


def _closes_a_circle(lock: _PackageLock, me: int) -> bool:
    """Whether waiting for `lock` would wait, through other waiting threads, for `me`."""
    owner, seen = lock.owner, set()
    while owner is not None and owner not in seen:
        if owner == me:
            return True
        seen.add(owner)
        waited = _waiting.get(owner)
        owner = waited.owner if waited is not None else None
    return False


def _acquire(package: str) -> _PackageLock | None:
    """The package's lock, held by this thread; None where waiting would deadlock or time out.

    A thread that goes ahead unlocked may then block on CPython's own lock of a module the
    owner of our lock is importing; whoever waits for that thread's locks goes ahead too, so
    CPython sees the whole circle and breaks it as it would without this module."""
    me = threading.get_ident()
    deadline = time.monotonic() + MAX_WAIT_S
    with _state:
        lock = _locks.setdefault(package, _PackageLock())
        while lock.owner not in (None, me):
            left = deadline - time.monotonic()
            if left <= 0 or lock.owner in _unlocked or _closes_a_circle(lock, me):
                if left <= 0:
                    log.warning("importing from %s waited %.0f s for another thread; going "
                                "ahead", package, MAX_WAIT_S)
                _unlocked[me] = _unlocked.get(me, 0) + 1
                _state.notify_all()
                return None
            _waiting[me] = lock
            try:
                _state.wait(min(left, 1.0))
            finally:
                del _waiting[me]
        lock.owner = me
        lock.count += 1
        return lock


def _release(lock: _PackageLock | None) -> None:
    me = threading.get_ident()
    with _state:
        if lock is None:
            _unlocked[me] -= 1
            if not _unlocked[me]:
                del _unlocked[me]
            return
        lock.count -= 1
        if lock.count == 0:
            lock.owner = None
            _state.notify_all()


def _locked(package: str, call: Callable, *args):
    lock = _acquire(package)
    try:
        return call(*args)
    finally:
        _release(lock)


def _top_level(name: str, globals: Mapping | None, level: int) -> str:
    if level == 0:
        return name.partition(".")[0]
    package = (globals or {}).get("__package__") or (globals or {}).get("__name__") or ""
    return package.partition(".")[0]


def _import(name, globals=None, locals=None, fromlist=(), level=0):
    original = _original["__import__"]
    if level == 0 and _loaded_with(name, fromlist):
        return original(name, globals, locals, fromlist, level)
    return _locked(_top_level(name, globals, level), original, name, globals, locals, fromlist,
                   level)


def _import_module(name, package=None):
    original = _original["import_module"]
    if not name.startswith("."):
        if loaded(name):
            return sys.modules[name]
        return _locked(name.partition(".")[0], original, name, package)
    return _locked((package or "").partition(".")[0], original, name, package)


def serialise_imports() -> None:
    """Route first imports (`import` statements and `importlib.import_module`) through their
    package's lock. Idempotent; for the whole process."""
    if _original:
        return
    _original["__import__"] = builtins.__import__
    _original["import_module"] = importlib.import_module
    builtins.__import__ = _import
    importlib.import_module = _import_module


def warm_up(modules: Sequence[str] = WARM_UP_MODULES) -> None:
    """Import `modules` one after the other."""
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception:  # an optional backend missing: the stage that needs it says so
            log.exception("warm-up: could not import %s", module)


def start_warm_up() -> threading.Thread:
    thread = threading.Thread(target=warm_up, name="import-library", daemon=True)
    thread.start()
    return thread
