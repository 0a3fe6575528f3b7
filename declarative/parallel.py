"""parallel: one shared thread pool for work that releases the GIL, and BLAS held to one
thread while it runs.

Our dense systems are small and many, so we parallelize across instances (solver calls,
LAPACK factorizations) and keep BLAS itself single-threaded. Used by every solver backend
and by the linear algebra of refinement and differentiation alike.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Empty, SimpleQueue
from typing import Any, Generic, TypeVar, overload

from threadpoolctl import ThreadpoolController

T = TypeVar("T")
R = TypeVar("R")

_PREFIX = "declarative-worker"
_CPUS = os.cpu_count() or 1  # read once: os.cpu_count() is not free (it parses sysfs)
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_CPUS,
                                       thread_name_prefix=_PREFIX)
        return _pool


_blas_libs: list | None = None
_blas_saved: list = []
_blas_depth = 0  # open single_threaded_blas contexts, all threads together
_blas_lock = threading.Lock()
_blas_own = threading.local()  # .depth: those of this thread (what survives a fork)
_inside = threading.local()  # .depth: parallel_map items this thread is running


def single_threaded_blas() -> contextlib.AbstractContextManager[None]:
    """A context in which BLAS/LAPACK run on one thread.

    Our dense systems are small and many; we parallelize across instances instead.
    Multithreaded BLAS on small matrices is slower, and on a loaded machine
    catastrophically so (tens of times for a few-hundred-square LU). Nested and concurrent uses
    share one limit (it is process-wide), which is lifted when the last one exits. The
    BLAS libraries are found once (threadpoolctl); each library's thread count is then read
    and set directly (threadpoolctl's own `limit` re-inspects every library on each call).
    """
    return _BlasLimit()


class _BlasLimit:
    """`single_threaded_blas`'s context: a plain class, not a generator, since a layer call
    enters it about ten times (each `parallel_map`), and a generator's context costs
    several times the counting it does."""

    __slots__ = ("_entered",)

    def __init__(self) -> None:
        self._entered = False

    def __enter__(self) -> None:
        global _blas_libs, _blas_saved, _blas_depth
        try:
            with _blas_lock:
                if _blas_libs is None:
                    _blas_libs = ThreadpoolController().select(user_api="blas").lib_controllers
                _blas_depth += 1
                _blas_own.depth = getattr(_blas_own, "depth", 0) + 1
                self._entered = True
                if _blas_depth == 1:
                    _blas_saved = [(lib, lib.num_threads) for lib in _blas_libs]
                    for lib, threads in _blas_saved:
                        if threads != 1:
                            _set_threads(lib, 1)
        except BaseException:  # (an interrupt while setting the limit: counted out again)
            self.__exit__()
            raise

    def __exit__(self, *exc: object) -> None:
        global _blas_depth
        if self._entered:
            self._entered = False
            with _blas_lock:
                _blas_own.depth -= 1
                _blas_depth -= 1
                if _blas_depth == 0:
                    _restore_blas()


def _restore_blas() -> None:
    for lib, threads in _blas_saved:
        if threads != 1:
            _set_threads(lib, threads)


def _set_threads(lib, threads: int) -> None:
    """Set ``lib``'s thread count from whichever thread runs this. threadpoolctl's OpenBLAS
    controller lets only the first thread that set a limit set it again while that thread
    lives (the main thread, once it has called a layer) and silently ignores the others, whose
    layer calls would run BLAS on every core beside the pool's workers and round differently
    from the main thread's. Our own depth count and lock above already keep threads from
    fighting over the limit, so the controller's own setter is used where it has one."""
    setter = getattr(lib, "_real_set_num_threads", None)
    (setter or lib.set_num_threads)(threads)


# The objects whose ``_lock`` guards what they decide once (a layer's tuning, a sparse
# layout's orderings), each given a new lock in a forked child (`fork_safe_lock`).
_lock_owners: weakref.WeakSet = weakref.WeakSet()


def fork_safe_lock(owner: object) -> threading.Lock:
    """A new lock for ``owner._lock``, which a forked child replaces with a free one: held by
    another thread at the fork, it would stay held in the child, and the child's first call
    that takes it would wait forever."""
    _lock_owners.add(owner)
    return threading.Lock()


class cached_property(Generic[T]):  # noqa: N801 - functools' name
    """`functools.cached_property` without its lock, as in Python 3.12: in 3.11 every
    instance of a class computes the property under one lock of the class's, so threads
    computing it for different instances wait for each other (two threads' VJPs of two
    results, one after the other), and a fork while one computes leaves that lock held in
    the child for good (its first VJP waited forever). Here two threads that ask for one
    instance's value at once may both compute it (the last one stored is kept): for values
    that are functions of the instance alone; where that matters, the property locks
    itself."""

    def __init__(self, func: Callable[[Any], T]) -> None:
        self.func, self.__doc__, self.name = func, func.__doc__, ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type | None = None) -> cached_property[T]: ...

    @overload
    def __get__(self, instance: object, owner: type | None = None) -> T: ...

    def __get__(self, instance: object | None, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = self.func(instance)
        instance.__dict__[self.name] = value  # (read from there next: no descriptor call)
        return value


# What other threads dropped that a thread must drop itself (`send_home`), by thread ident.
_homes: dict[int, SimpleQueue] = {}


def send_home(obj: object, home: threading.Thread) -> None:
    """Have the thread ``home`` drop ``obj`` (at its next `release_here`) where it is another
    live thread; else do nothing (the caller's reference, dropped here, is the last).

    For objects whose memory only the thread that made them can free: SciPy's SuperLU
    records a factorization's allocations in its thread's own table and frees them only
    from that table, so one made on a pool worker and dropped on the caller's thread is
    never freed. Safe from ``__del__`` (a `SimpleQueue` put takes no lock that a collection
    on this thread could already hold)."""
    if home is threading.current_thread() or not home.is_alive() or home.ident is None:
        return
    queue = _homes.get(home.ident)
    if queue is None:
        queue = _homes.setdefault(home.ident, SimpleQueue())
    queue.put(obj)


def release_here() -> None:
    """Drop what other threads sent this one (`send_home`). Called by every pool task as it
    starts and by `on_a_lasting_thread` (before each new SuperLU factorization), so a worker
    holds at most what was dropped since its last task."""
    queue = _homes.get(threading.get_ident())
    if queue is None:
        return
    while True:
        try:
            queue.get_nowait()
        except Empty:
            return


def _on_a_pool_worker() -> bool:
    return threading.current_thread().name.startswith(_PREFIX)


def on_a_lasting_thread(fn: Callable[[], T]) -> T:
    """``fn()`` on this thread where it lasts (the main thread, a pool worker), else on a pool
    worker, after that thread drops what it was sent (`release_here`): for objects only
    their own thread can free (`send_home`), which a thread that ends first would leave
    unfreed (a layer called from a short-lived user thread, its result used after)."""
    def there() -> T:
        release_here()
        return fn()

    if threading.current_thread() is threading.main_thread() or _on_a_pool_worker():
        return there()

    try:
        future = _executor().submit(there)
    except RuntimeError:  # the interpreter is shutting down: no pool to hand it to
        return fn()
    return future.result()


def _reset_after_fork() -> None:
    """In a forked child (a DataLoader worker, multiprocessing's "fork"), only the forking
    thread exists: the pool's workers are gone (work submitted to the inherited pool would
    never run) and a lock another thread held stays held. Start a new pool on demand, make
    new locks (ours, and those of `fork_safe_lock`'s owners), and keep only the forking
    thread's own single_threaded_blas contexts (lifting the limit now if the parent's were
    all in other threads) and what other threads sent it to drop (`send_home`: what was
    sent to threads that are gone stays unfreed, as their tables are)."""
    global _pool, _pool_lock, _blas_lock, _blas_depth, _homes
    mine = _homes.get(threading.get_ident())
    _homes = {} if mine is None else {threading.get_ident(): mine}
    for owner in list(_lock_owners):
        owner._lock = threading.Lock()
    _pool = None
    _pool_lock = threading.Lock()
    _blas_lock = threading.Lock()
    own = getattr(_blas_own, "depth", 0)
    if own == 0 and _blas_depth > 0:
        _restore_blas()
    _blas_depth = own


os.register_at_fork(after_in_child=_reset_after_fork)


# A forked child clears the state of every thread but the forking one before any at-fork
# hook runs, and with it SciPy's SuperLU table of each (`send_home`). Up to SciPy 1.17 that
# fails where the table is not empty (a pool worker's factorization still alive: a kept
# result, a layout's cached LU) and leaves a TypeError pending, so that the first at-fork hook
# to run in the child (threading's, or `random`'s reseeding where `random` was imported
# first) fails with a SystemError: printed, and the child's threading module counting the
# parent's threads as alive, or its random numbers the parent's. Around a fork that
# failure is held back, and in the child the hook that failed is run again (its failure
# shown only if it fails again).
_fork_state: dict = {}


def _before_fork() -> None:
    if sys.unraisablehook is not _hold_pending_failure:  # (not already: another fork's)
        _fork_state.update(hook=sys.unraisablehook, held=[], forks=0)
        sys.unraisablehook = _hold_pending_failure
    _fork_state["forks"] += 1


def _hold_pending_failure(unraisable) -> None:
    exc = unraisable.exc_value
    if isinstance(exc, SystemError) and isinstance(exc.__cause__ or exc.__context__, TypeError) \
            and callable(unraisable.object) and "held" in _fork_state:
        _fork_state["held"].append((os.getpid(), unraisable))  # (by process: see below)
    else:
        _fork_state.get("hook", sys.__unraisablehook__)(unraisable)


def _after_fork_in_parent() -> None:
    """The parent's own failures held meanwhile (other threads') are shown, not rerun."""
    hook = _fork_state.get("hook", sys.__unraisablehook__)
    held, _fork_state["held"] = _fork_state.get("held", []), []
    _fork_state["forks"] = _fork_state.get("forks", 1) - 1
    if _fork_state["forks"] <= 0:  # (the last of forks made at once)
        if sys.unraisablehook is _hold_pending_failure:
            sys.unraisablehook = hook
        _fork_state.clear()
    for _, unraisable in held:
        hook(unraisable)


def _rerun_failed_hooks() -> None:
    if "hook" not in _fork_state:
        return
    hook, held = _fork_state["hook"], _fork_state["held"]
    if sys.unraisablehook is _hold_pending_failure:
        sys.unraisablehook = hook
    _fork_state.clear()
    for pid, unraisable in held:
        if pid != os.getpid():
            continue  # (the parent's, shown there)
        try:
            unraisable.object()
        except Exception:  # noqa: BLE001 - it fails on its own: shown as it was
            hook(unraisable)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_rerun_failed_hooks)


def _wait(futures: list[Future]) -> BaseException | None:
    """Wait for every future; the first exception any raised, or None."""
    first = None
    for fut in futures:
        try:
            fut.result()
        except BaseException as exc:  # noqa: BLE001 - collected, re-raised by the caller
            first = first or exc
    return first


def workers() -> int:
    """How many threads `parallel_map` runs on (the calling one included)."""
    return _CPUS


def parallel_map(f: Callable[[T], R], items: list[T]) -> list[R]:
    """``[f(x) for x in items]`` across the shared thread pool, BLAS single-threaded.

    For work that releases the GIL (SCS, LAPACK). Each worker, the calling thread
    included, pulls the next index from a shared counter: one task per worker rather
    than one future per item (a future's hand-offs cost more than a small solve), with
    dynamic load balancing. Once ``f`` raises anywhere, or the calling
    thread is interrupted (KeyboardInterrupt), no further item is started; the call
    returns when the items already started are done, raising the caller's exception, else
    the first worker's. Called from an item of another `parallel_map` (in any thread, the
    calling one included), it runs its items in that thread: the outer map already holds
    every worker.
    """
    n = len(items)
    workers = min(_CPUS, n)
    with single_threaded_blas():
        if workers <= 1 or getattr(_inside, "depth", 0) > 0 or \
                _on_a_pool_worker():
            return [f(x) for x in items]
        out: list = [None] * n
        counter = itertools.count()
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set() and (i := next(counter)) < n:
                out[i] = f(items[i])

        _on_workers(loop, workers, stop)
        return out


def _on_workers(loop: Callable[[], None], workers: int, stop: threading.Event) -> None:
    """Run ``loop`` (which takes its items from a shared counter until none is left or
    ``stop`` is set) on ``workers`` threads, the calling one included, each marked as inside
    a map (nested maps run inline). Once it raises anywhere, or the calling thread is
    interrupted, ``stop`` is set; returns when the items already started are done, raising
    the caller's exception, else the first worker's."""

    def work() -> None:
        release_here()
        _inside.depth = getattr(_inside, "depth", 0) + 1
        try:
            loop()
        except BaseException:
            stop.set()
            raise
        finally:
            _inside.depth -= 1

    pending: list[Future] = []
    try:
        for _ in range(workers - 1):
            pending.append(_executor().submit(work))
        work()
    except BaseException:
        stop.set()
        _wait(pending)  # the items already started: their exceptions yield to ours
        raise
    error = _wait(pending)
    if error is not None:
        raise error


def pipelined(produce: Callable[[int], T], consume: Callable[[int, T], R], n: int) -> list[R]:
    """``[consume(i, produce(i)) for i in range(n)]`` across the shared thread pool, BLAS
    single-threaded, with one item's production overlapping another's consumption.

    For a first stage that releases the GIL (a solver's calls) followed by one that mostly
    holds it (Python and small NumPy arithmetic): `parallel_map` of both stages together
    runs the first on every core at once and then the second on one core at a time, while
    here each worker (the calling thread included) takes the next of the tasks produce 0,
    produce 1, consume 0, produce 2, consume 1, …, so that while one consumes item i
    another produces item i + 1. A consume task waits for its item's production (taken
    earlier, so running or done). Each stage is a function of its item alone, so the results
    do not depend on which worker ran what. Errors and interrupts as `parallel_map`: once
    anything raises, no further task is started; called from an item of `parallel_map` or
    of this, it runs every item in that thread.
    """
    tasks = [(0, 0)] if n else []
    for i in range(n):
        if i + 1 < n:
            tasks.append((0, i + 1))
        tasks.append((1, i))
    workers = min(_CPUS, n)
    with single_threaded_blas():
        if workers <= 1 or getattr(_inside, "depth", 0) > 0 or \
                _on_a_pool_worker():
            return [consume(i, produce(i)) for i in range(n)]
        products: list = [None] * n
        out: list = [None] * n
        made = [threading.Event() for _ in range(n)]
        failed = [False] * n
        counter = itertools.count()
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set() and (k := next(counter)) < len(tasks):
                stage, i = tasks[k]
                if stage == 0:
                    try:
                        products[i] = produce(i)
                    except BaseException:
                        failed[i] = True
                        stop.set()
                        raise
                    finally:
                        made[i].set()
                else:
                    made[i].wait()
                    if failed[i] or stop.is_set():
                        return
                    out[i] = consume(i, products[i])
                    products[i] = None

        _on_workers(loop, workers, stop)
        return out
