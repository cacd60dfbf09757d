"""A single-threaded executor that calls subscription and guard-condition callbacks directly.

Why: between its wait returning and a callback starting, rclpy's ``SingleThreadedExecutor``
spends 0.35-0.4 ms of Python on this machine when the process was idle (cold caches: a node
at camera rate is idle most of the time). It closes every entity's context, builds a ``Task``
around a coroutine for the one callback it runs, and re-gathers everything for the next. On an
in-process hand-off of about 0.9 ms that is a third of the time. Measured with a guard condition
triggered every 100 ms from another thread (``spin_once`` to the callback, post-wake work only):
0.36-0.38 ms; a bare wait set: about 0.1 ms in all.

:class:`DirectExecutor` waits on the same rcl wait set, with the same entities, then runs the
callbacks of ready subscriptions and triggered guard conditions at once, in this thread. All
else that is ready -- timers, services (parameters, lifecycle), clients, waitables (QoS events),
coroutine tasks -- goes to rclpy's own machinery (``SingleThreadedExecutor.spin_once``), so
their semantics stay rclpy's. A ``spin_once`` may run several callbacks (like rclcpp's
``spin_some``), each ready entity at most once.

It is opt-in: ``AUTODICE_EXECUTOR=direct`` in a node's environment (:func:`make_executor`);
nodes spin with rclpy's ``SingleThreadedExecutor`` otherwise. It shortens the in-process hand-off
(3.2 MB p50 0.89-1.01 -> 0.59-0.82 ms) but not the same-board fast path (written in place as
stages do: 0.97-1.20 ms against rclpy's 0.90-1.23, the DDS trip of the descriptor), and in an
A/B of ``bench boards`` (layer-wise K=3, 1 Gbit/s, alternating runs) its peak rates were no
better: 2.01-2.32 fps (mean 2.19, 5 runs) against rclpy's 2.01-2.56 (mean 2.32, 4 runs), within
this host's noise.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from rclpy.exceptions import InvalidHandle
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.subscription import Subscription
from rclpy.utilities import timeout_sec_to_nsec
from rclpy.waitable import NumberOfEntities

from autodice_ros.errors import AutodiceError

EXECUTOR_VAR = 'AUTODICE_EXECUTOR'
EXECUTORS = ('rclpy', 'direct')


class _Gathered:
    """The entities of the executor's nodes that one wait covers (those that can execute now)."""

    def __init__(self) -> None:
        self.subscriptions: list[Any] = []
        self.guards: list[Any] = []
        self.timers: list[Any] = []
        self.clients: list[Any] = []
        self.services: list[Any] = []
        self.waitables: list[Any] = []


class DirectExecutor(SingleThreadedExecutor):
    """``SingleThreadedExecutor`` with subscription and guard-condition callbacks called directly
    after the wait (see the module docstring for why and what is left to rclpy)."""

    def spin_once(self, timeout_sec: float | None = None) -> None:
        if self._tasks:                        # coroutines in progress: rclpy's machinery runs them
            super().spin_once(timeout_sec)
            return
        if self._wait_and_call(timeout_sec_to_nsec(timeout_sec)):
            super().spin_once(0)               # a timer, service, client or waitable: rclpy's way

    def _gather(self) -> _Gathered:
        found = _Gathered()
        for node in self.get_nodes():
            found.subscriptions.extend(s for s in node.subscriptions if self.can_execute(s))
            found.timers.extend(t for t in node.timers if self.can_execute(t))
            found.clients.extend(c for c in node.clients if self.can_execute(c))
            found.services.extend(s for s in node.services if self.can_execute(s))
            found.waitables.extend(w for w in node.waitables if self.can_execute(w))
            for guard in node.guards:
                if self.can_execute(guard):
                    if guard._executor_triggered:      # triggered earlier, not yet handled
                        guard.trigger()
                    found.guards.append(guard)
        return found

    def _wait_and_call(self, timeout_nsec: int) -> bool:
        """Wait like rclpy's executor, call the ready subscriptions' and guard conditions'
        callbacks; True when something else is ready too."""
        found = self._gather()
        own_guards = [g for g in (self._guard, self._sigint_gc) if g is not None]
        with ExitStack() as stack:
            subscriptions = self._enter(stack, found.subscriptions)
            timers = self._enter(stack, found.timers)
            clients = self._enter(stack, found.clients)
            services = self._enter(stack, found.services)
            guards = self._enter(stack, found.guards + own_guards)
            waitables = self._enter(stack, found.waitables, lambda waitable: waitable)
            if self._context.handle is None:
                raise RuntimeError('Cannot enter context if context is None')
            stack.enter_context(self._context.handle)
            counts = NumberOfEntities(len(subscriptions), len(guards), len(timers), len(clients),
                                      len(services))
            for waitable in waitables:
                counts += waitable.get_num_entities()
            wait_set = _rclpy.WaitSet(counts.num_subscriptions, counts.num_guard_conditions,
                                      counts.num_timers, counts.num_clients, counts.num_services,
                                      counts.num_events, self._context.handle)
            wait_set.clear_entities()
            for sub in subscriptions:
                wait_set.add_subscription(sub.handle)
            for client in clients:
                wait_set.add_client(client.handle)
            for service in services:
                wait_set.add_service(service.handle)
            for timer in timers:
                wait_set.add_timer(timer.handle)
            for guard in guards:
                wait_set.add_guard_condition(guard.handle)
            for waitable in waitables:
                waitable.add_to_wait_set(wait_set)

            wait_set.wait(timeout_nsec)
            if self._is_shutdown:
                return False
            if not self._context.ok():
                raise ExternalShutdownException()

            # the callbacks first: the rest of the bookkeeping is not on a frame's path. (Entities
            # a callback destroys stay valid until the stack exits, as in rclpy's executor.)
            guards_ready = wait_set.get_ready_entities('guard_condition')
            for guard in guards:
                if guard.handle.pointer in guards_ready:
                    guard._executor_triggered = False
                    if guard.callback is not None:
                        self._call(guard.callback)
            subs_ready = wait_set.get_ready_entities('subscription')
            for sub in subscriptions:
                if sub.handle.pointer in subs_ready:
                    self._take_and_call(sub)
            return bool(wait_set.get_ready_entities('timer') or wait_set.get_ready_entities('client')
                        or wait_set.get_ready_entities('service')
                        or any(w.is_ready(wait_set) for w in waitables))

    @staticmethod
    def _enter(stack: ExitStack, entities: list[Any],
               context: Callable[[Any], Any] = lambda entity: entity.handle) -> list[Any]:
        """The entities whose ``context`` (their handle; a waitable itself) could be entered; the
        others were destroyed meanwhile."""
        alive = []
        for entity in entities:
            try:
                stack.enter_context(context(entity))
            except InvalidHandle:
                continue
            alive.append(entity)
        return alive

    def _take_and_call(self, sub: Any) -> None:
        try:
            with sub.handle:
                taken = sub.handle.take_message(sub.msg_type, sub.raw)
        except InvalidHandle:           # destroyed by an earlier callback of this round
            return
        if taken is None:
            return
        if sub._callback_type is Subscription.CallbackType.MessageOnly:
            self._call(sub.callback, taken[0])
        else:
            self._call(sub.callback, *taken)

    def _call(self, callback: Any, *args: Any) -> None:
        result = callback(*args)
        if inspect.iscoroutine(result):        # an async callback: rclpy runs it as a task
            async def finish() -> None:
                await result
            self.create_task(finish)


def make_executor(**kwargs: Any) -> SingleThreadedExecutor:
    """The executor a node spins with: rclpy's ``SingleThreadedExecutor``, or :class:`DirectExecutor`
    when ``AUTODICE_EXECUTOR=direct``. ``kwargs`` go to the executor (``context=``)."""
    choice = os.environ.get(EXECUTOR_VAR, 'rclpy') or 'rclpy'
    if choice not in EXECUTORS:
        raise AutodiceError(f'{EXECUTOR_VAR}={choice!r}: expected one of {", ".join(EXECUTORS)}')
    return DirectExecutor(**kwargs) if choice == 'direct' else SingleThreadedExecutor(**kwargs)
