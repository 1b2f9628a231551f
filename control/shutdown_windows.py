"""Windows shutdown paths: closing the console window, Ctrl+C/Ctrl+Break, logoff and shutdown stop the batteries.

On Windows these arrive as console control events, not as SIGTERM. Windows calls the registered handler
in a new thread and, for CTRL_CLOSE_EVENT, CTRL_LOGOFF_EVENT and CTRL_SHUTDOWN_EVENT, ends the process when
the handler returns or about 5 s after the event, whichever is first. The handler therefore requests the
same stop as SIGTERM and *blocks* until main() has stopped every battery, for at most ``HANDLER_BUDGET_S``.

Limits (Windows' own): a process without a console (pythonw.exe) gets no console events at all, and one
that has loaded user32.dll gets no logoff/shutdown events (only a hidden window's WM_ENDSESSION would).

``handle_console_event`` is the plain logic (tests call it on Linux); ``install_shutdown_handlers``
registers it with ``SetConsoleCtrlHandler`` (ctypes, only on Windows) and handles SIGBREAK where it exists.
"""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from typing import Any

from control.i18n import Msg

log = logging.getLogger("marstek")

# wincon.h
CTRL_C_EVENT = 0
CTRL_BREAK_EVENT = 1
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6
EVENT_NAMES = {
    CTRL_C_EVENT: "CTRL_C_EVENT",
    CTRL_BREAK_EVENT: "CTRL_BREAK_EVENT",
    CTRL_CLOSE_EVENT: "CTRL_CLOSE_EVENT",
    CTRL_LOGOFF_EVENT: "CTRL_LOGOFF_EVENT",
    CTRL_SHUTDOWN_EVENT: "CTRL_SHUTDOWN_EVENT",
}
# Windows ends the process about 5 s after CTRL_CLOSE_EVENT: leave a margin for the log line and the exit.
HANDLER_BUDGET_S = 4.0

# The ctypes callbacks handed to Windows: a collected callback would crash the process on the next event.
_callbacks: list[Any] = []
_handlers: list[Callable[[int], bool]] = []


def handle_console_event(
    event: int,
    request_stop: Callable[[], None],
    wait_until_stopped: Callable[[float], bool],
    budget_s: float = HANDLER_BUDGET_S,
) -> bool:
    """Stop like SIGTERM and wait until the batteries are stopped; True when the event was handled.

    ``wait_until_stopped(timeout_s)`` returns True once main() has finished its shutdown (every battery
    in its exit state). An unknown event returns False so that the next handler (Windows' default:
    end the process) decides.
    """
    name = EVENT_NAMES.get(event)
    if name is None:
        return False
    try:
        log.warning(Msg("windows_event", event=name))
        request_stop()
        if not wait_until_stopped(budget_s):
            log.error(Msg("windows_shutdown_late", seconds=budget_s, event=name))
    except Exception:
        # Raising into ctypes would print a traceback and return FALSE: Windows would kill us at once.
        log.exception(Msg("windows_event_failed", event=name))
    return True


def register_console_handler(handler: Callable[[int], bool]) -> bool:
    """Register ``handler`` with SetConsoleCtrlHandler; False (and nothing done) when not on Windows."""
    if sys.platform != "win32":
        return False
    import ctypes
    from ctypes import wintypes

    handler_routine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)
    callback = handler_routine(lambda event: bool(handler(int(event))))
    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    kernel32.SetConsoleCtrlHandler.argtypes = (handler_routine, wintypes.BOOL)
    kernel32.SetConsoleCtrlHandler.restype = wintypes.BOOL
    if not kernel32.SetConsoleCtrlHandler(callback, True):
        log.warning(Msg("windows_handler_failed", error=ctypes.get_last_error()))
        return False
    _callbacks.append(callback)
    return True


def install_shutdown_handlers(
    request_stop: Callable[[], None], wait_until_stopped: Callable[[float], bool]
) -> Callable[[int], bool]:
    """Route the Windows console events and SIGBREAK to ``request_stop``; returns the console handler.

    Call from the main thread (signal.signal requires it). On other platforms only the returned handler
    exists (for tests); nothing is registered.
    """

    def handler(event: int) -> bool:
        return handle_console_event(event, request_stop, wait_until_stopped)

    sigbreak = getattr(signal, "SIGBREAK", None)
    if sigbreak is not None:

        def on_sigbreak(_signum: int, _frame: object) -> None:
            log.info(Msg("signal_received", name="SIGBREAK"))
            request_stop()

        signal.signal(sigbreak, on_sigbreak)
    register_console_handler(handler)
    _handlers.append(handler)
    return handler


def installed_handler() -> Callable[[int], bool] | None:
    """The console handler of the last ``install_shutdown_handlers`` call (what Windows calls)."""
    return _handlers[-1] if _handlers else None
