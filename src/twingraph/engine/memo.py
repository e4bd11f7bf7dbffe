"""Memo decisions of a run: the structural key of a task whose inputs are complete, and what
follows from it — resumed (this run recorded it before it stopped), a twin in this run (same
key: computed once), a hit in the result store, or a miss with the reason it missed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from hashlib import sha256
from typing import Any

from twingraph.core.hashing import (begin_walk, digest_json, digest_kwargs, digest_value,
                                    end_walk, mark_walk, number_leaf, outside_walk, own_key,
                                    prefixed_key, rewind_walk)
from twingraph.core.records import TaskRecord
from twingraph.engine.calls import receives_lineage, strip_lineage
from twingraph.engine.refs import Ref
from twingraph.engine.task import (DECLARED, Task, CANCELLED, FAILED, QUEUED, SKIPPED,
                                    SUCCESS, TERMINAL)



#: The most tasks of a pipeline's last run that a run loads to tell why its tasks missed
#: (``Engine._previous_tasks``).
PREVIOUS_MAX = 100_000
#: Argument types whose digest walks nothing (``MemoSide._on_ready``'s path without a walk).
_FLAT = frozenset({Ref, int, bool, type(None), str, float})


class TooLarge(dict):  # type: ignore[type-arg]
    """The last run had more than ``PREVIOUS_MAX`` tasks: nothing was loaded to compare."""


class MemoSide:
    """Mixed into ``RunLoop``; the attributes below are the loop's."""
    engine: Any
    opt: Any
    run_id: str
    epoch: int
    prior: dict[str, TaskRecord]
    resuming: dict[Task, str]    # recorded SUCCESS before the stop, being looked up: structural key
    by_key: dict[str, Task]
    by_own_key: dict[str, Task]
    ready: deque[Task]
    _previous: Mapping[str, TaskRecord] | None
    _previous_loader: Callable[[], Mapping[str, TaskRecord]] | None
    _set_state: Callable[..., None]
    _finish: Callable[..., None]
    _after_failure: Callable[[Task], None]
    _skip_downstream: Callable[[Task], None]
    stopping: str | None
    _handler_of: Callable[[Any], tuple[str, Mapping[str, Any]]]

    def _on_ready(self, task: Task) -> bool:
        """Key a task whose inputs are complete. Returns True if its key must be looked up in
        the result store (the caller batches those lookups, then calls ``_after_lookup``)."""
        spec = task.spec
        if task.ref_slots is DECLARED:
            key = declared_key(self.engine, task)
        else:
            leaf = self.engine.hash_value
            args, kwargs = task.args, task.kwargs
            if ("parent_hash" in kwargs or "parent_hashes" in kwargs) \
                    and not receives_lineage(task.fn):
                kwargs = strip_lineage(kwargs)        # not given to it: not an input
            named = spec.parameters
            if named is not None and (args or named.defaults):
                args, kwargs = named.named(args, kwargs)     # f(3) and f(x=3): one key
            digest: Any
            if type(args) is tuple and not args and _FLAT.issuperset(map(type, kwargs.values())):
                # Keyword arguments that are futures and scalars (``f(x=r[...])``): nothing to
                # walk, the digest the walk below gives (``()`` digests to ``{"t": []}``).
                digest = [{"t": []}, digest_kwargs(kwargs, Ref, _ref_digest, leaf)]
            else:
                begin_walk()    # one walk for the call: an object in two arguments is one
                try:
                    digest = [digest_value(args, Ref, _ref_digest, leaf),
                              digest_kwargs(kwargs, Ref, _ref_digest, leaf)]
                except RecursionError:  # an argument too deep to walk (and no future: refs)
                    digest = None
                finally:
                    end_walk()          # (forgets what the cut-short walk had numbered)
            if digest is None:          # again, the one too deep by its pickle
                begin_walk()
                try:
                    digest = [[_deep_digest(a, leaf) for a in args],
                              {"d": {k: _deep_digest(kwargs[k], leaf) for k in sorted(kwargs)}}]
                finally:
                    end_walk()
            key = prefixed_key(self.engine.key_prefix(spec), digest)
        return self._keyed(task, key)

    def _keyed(self, task: Task, key: str) -> bool:
        """``_on_ready`` of a task given its structural ``key``."""
        memoize = self._memoizes(task)
        prior = self.prior.get(task.node_id) if self.prior else None
        structural = key
        if not memoize:                # its result is its own, not shared by key
            if prior is not None and prior.state is SUCCESS and prior.cache_key and (
                    prior.cache_key == key or any(
                        prior.cache_key == own_key(key, self.run_id, task.node_id, e)
                        for e in range(self.epoch))):
                # stored under an earlier driver of this run (its row's fence may be a later
                # driver's, which resumed it: every earlier generation is tried); or under its
                # structural key, by this run before a resume asked for --no-cache: what the
                # run stored is kept, as it is for a cache=False task (it was computed again)
                key = prior.cache_key
            else:
                key = own_key(key, self.run_id, task.node_id, self.epoch)
        elif prior is not None and prior.state is SUCCESS and prior.cache_key \
                and prior.cache_key != key and prior.content_hash and any(
                    prior.cache_key == own_key(key, self.run_id, task.node_id, e)
                    for e in range(self.epoch)):
            # Computed by an earlier driver of this run that did not memoize it (a resume
            # with --no-cache, or cache=False then): kept, found under that driver's own key.
            # It ran again, "inputs changed", when a later resume memoized it.
            task.cache_key = prior.cache_key
            self.resuming[task] = structural
            return True
        task.cache_key = key
        if prior is not None and prior.state is SUCCESS and prior.cache_key == key \
                and prior.content_hash:
            # Recorded SUCCESS before the stop: looked up like a memo key all the same (in the
            # burst's one query). Its result may never have been stored (a write batch given
            # up, a purged store); a resume that trusted the row would fail on every try.
            self.resuming[task] = structural
            if not memoize:
                self.by_own_key[key] = task       # what its r["hash"] names (_named_parents)
                return True
        twin = self.by_key.get(key) if memoize else None
        if twin is not None and twin.state in TERMINAL and twin.state is not SUCCESS:
            # It failed (or was cancelled) before this call was made: this one computes anew,
            # as a body that catches the failure and calls again asks (a twin in flight is
            # followed: the same call at the same time).
            twin = None
        if twin is not None and twin is not task:
            if self.resuming:
                self.resuming.pop(task, None)      # finishes as its twin does
            if twin.state in TERMINAL:
                self._follow_twin(task, twin)
            else:
                if twin.aliases is None:
                    twin.aliases = []
                twin.aliases.append(task)
                self._set_state(task, QUEUED)
            return False
        if memoize:
            self.by_key[key] = task
            return True
        task.cache_status = "disabled"
        task.cache_reason = "--no-cache" if self.opt.no_cache else "cache=False on the component"
        self.by_own_key[key] = task
        self._set_state(task, QUEUED)
        self.ready.append(task)
        return False

    def _after_lookup(self, task: Task, content_hash: str | None) -> None:
        structural = self.resuming.pop(task, None) if self.resuming else None
        if content_hash is not None:
            if structural is not None:
                self._resumed(task, content_hash)
            else:
                self._hit(task, content_hash, "hit", "stored result with the same code, config and inputs")
            return
        if structural is not None:
            reason = "recorded by this run before it stopped, but its result is not in the result store"
            if self._memoizes(task):
                task.cache_status = "miss"
                task.cache_key = structural       # (it was looked up under an own key above)
            else:                 # computed again by this driver: under its own epoch's key
                task.cache_status = "disabled"
                task.cache_key = own_key(structural, self.run_id, task.node_id, self.epoch)
                self.by_own_key[task.cache_key] = task
            task.cache_reason = reason
        else:
            task.cache_status, task.cache_reason = "miss", self._miss_reason(task)
        self._set_state(task, QUEUED)
        self.ready.append(task)

    def _resumed(self, task: Task, content_hash: str) -> None:
        """Finish a task this run computed before it stopped: its row keeps the attempt that
        computed it (times, attempts, fence), not this driver's moment of looking it up. Once
        this driver wrote a row for it (while it waited for an upstream task), the row carries
        this driver's fence: the fence then stays, as an update below it would be dropped as
        stale."""
        prior = self.prior[task.node_id]
        task.attempt = prior.attempts
        task.fence = max(task.fence, prior.fence) if task.persisted else prior.fence
        task.started_at = prior.started_at
        self._hit(task, content_hash, "resumed", "result recorded by this run before it stopped")
        task.ended_at = prior.ended_at or task.ended_at

    def _memoizes(self, task: Task) -> bool:
        return task.spec.cache and not self.opt.no_cache

    def _miss_reason(self, task: Task) -> str:
        # A resumed run: its own row from before the stop says most (e.g. the code changed).
        prev = self.prior.get(task.node_id) if self.prior else None
        since = "since the run stopped"
        if prev is None:
            if self._previous is None:
                self._previous = self._previous_loader() if self._previous_loader else {}
            prev = self._previous.get(task.node_id)
            since = "since the last run"
            if prev is None and type(self._previous) is TooLarge:
                return "no stored result (the last run was too large to compare it with)"
        if prev is None:
            return "no stored result (new task)"
        if prev.state is SUCCESS and prev.cache_key is not None \
                and prev.cache_key == task.cache_key and prev.cache_status != "disabled":
            # Same key: nothing changed, but the result is not here (another result store,
            # or one that was wiped or pruned).
            return (f"no stored result in this result store (same code, config and inputs "
                    f"as {'before the stop' if since == 'since the run stopped' else 'the last run'})")
        info = prev.inputs or {}
        if info.get("code_version") != task.spec.code_version:
            return f"code changed {since}"
        if info.get("config") != self.engine.fingerprint(task.spec)["config"]:
            return f"configuration changed {since}"
        if since == "since the run stopped":
            if prev.state is SUCCESS:      # computed then, but from inputs that changed since
                return "inputs changed since the run stopped"
            return ("no stored result (it failed before the run was resumed)"
                    if prev.state is FAILED else
                    "no stored result (it had not finished when the run stopped)")
        # Same code and config last run: new inputs, unless last run's result is none to reuse
        if prev.state is not SUCCESS:
            return f"no stored result (it was {prev.state.value} in the last run)"
        if prev.cache_status == "disabled":
            return "no stored result (the last run did not memoize it)"
        return "inputs changed since the last run"

    def _hit(self, task: Task, content_hash: str | None, status: str, reason: str, *,
             stored: bool = True) -> None:
        task.content_hash = content_hash
        task.cache_status, task.cache_reason = status, reason
        task.stored = stored
        self._finish(task, SUCCESS)

    def _follow_twin(self, task: Task, twin: Task) -> None:
        """Finish ``task`` the way its in-run twin (same structural key) finished; or, when
        the twin did not succeed and was called in another nested pipeline, compute it anew:
        the twin ended by that pipeline's rules (its timeout, its 'fail', its retry policy),
        which are not the rules of the pipeline ``task`` was called in."""
        if twin.state is not SUCCESS and task.scope is not twin.scope and not self.stopping \
                and (task.scope is None or all(s.ended is None for s in task.scope.chain())) \
                and not (twin.state is FAILED
                         and self._handler_of(task.scope) == self._handler_of(twin.scope)):
            # (a failure under the same error handler and retry rules would fail the same
            # way again: followed, however many calls of a nested pipeline made it)
            key = task.cache_key
            assert key is not None            # keyed in _on_ready: that is how it met its twin
            again = self.by_key.get(key)      # already computed anew for another
            if again is not None and again is not twin and again.state not in TERMINAL \
                    and again.scope is task.scope:
                if again.aliases is None:
                    again.aliases = []
                again.aliases.append(task)
                return
            task.cache_status = "miss"
            task.cache_reason = (f"same computation as {twin.node_id}, which ended "
                                 f"{twin.state.value.lower()} in another nested pipeline: computed again")
            self.by_key[key] = task
            self.ready.append(task)
            return
        if twin.state is SUCCESS:
            task.value = twin.value          # before _hit wakes anyone waiting on the task
            # Stored only if the twin's result is; otherwise the value stays in memory.
            self._hit(task, twin.content_hash, "hit",
                      f"same computation as {twin.node_id} in this run", stored=twin.stored)
        elif twin.state is FAILED:
            task.cache_status = "miss"
            task.cache_reason = f"same computation as {twin.node_id} in this run, which failed"
            self._finish(task, FAILED, error=twin.error)
            self._after_failure(task)
        elif twin.state is SKIPPED:
            self._finish(task, SKIPPED, error=twin.error)
            self._skip_downstream(task)
        else:
            self._finish(task, CANCELLED, error=twin.error)
            if not self.stopping:     # its twin's nested pipeline failed: the run goes on
                self._skip_downstream(task)



def declared_key(engine: Any, task: Task) -> str:
    """The structural key of a declared node whose producers have finished: the digest
    ``call`` would give the same node with futures for its inputs (same keys, same hits),
    without walking for them: ``[{"t": [arguments, parameters, {"o": [name, "@<producer's
    content hash>()", ...]}]}, {"d": {}}]``, its canonical JSON written around the part that
    varies."""
    leaf = engine.hash_value
    arguments, parameters, names, producers = task.args
    inputs: list[str] = []
    for n, p in zip(names, producers):
        inputs.append(n)
        inputs.append("@" + p.content_hash + "()")
    try:
        params = digest_value(parameters, Ref, _ref_digest, leaf)
    except RecursionError:          # nested too deep to walk: by its pickle, as a call's are
        begin_walk()
        try:
            params = _deep_digest(parameters, leaf)
        finally:
            end_walk()
    return sha256(engine.key_prefix(task.spec) + b'[{"t":' + digest_json(
        [_names_digest(arguments, leaf), params, {"o": inputs}]) + b'},{"d":{}}]').hexdigest()


def _deep_digest(value: Any, leaf: Callable[[Any], str]) -> Any:
    """One argument's digest when walking them ran out of stack: its own digest, or, for the
    one too deep to walk (a chain of thousands of nested lists or objects; one that holds
    itself is a reference, ``hashing.enter``), the hash of its pickle (it holds
    no futures: ``refs.find_refs_once`` found none) with the code of the classes of the
    objects inside it (a pickle names a class, not its code)."""
    mark = mark_walk()
    try:
        return digest_value(value, Ref, _ref_digest, leaf)
    except RecursionError:
        # what its walk had numbered is forgotten; its pickle is taken as an outermost
        # value's is (inside the call's walk, a user object's state walk would raise again)
        rewind_walk(mark)
        digest = {"x": outside_walk(leaf, value),
                  "c": sorted({leaf(t) for t in _classes_within(value)})}
        number_leaf(value)      # met again in the call (``f(deep, deep)``): a reference
        return digest


_BUILT_IN = frozenset({list, tuple, dict, set, frozenset, str, bytes, bytearray, int, float,
                       bool, complex, type(None)})


def _classes_within(value: Any, limit: int = 100_000) -> set[type]:
    """The classes (other than built-in ones) of the objects inside ``value``: its containers'
    items, dataclass fields and instance attributes, each object met once (at most
    ``limit`` objects)."""
    out: set[type] = set()
    seen: set[int] = set()
    stack = [value]
    while stack and len(seen) < limit:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        t = type(v)
        if t not in _BUILT_IN:
            out.add(t)
        if t is dict or isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
        elif t not in _BUILT_IN:
            attrs = getattr(v, "__dict__", None)
            if type(attrs) is dict:
                stack.extend(attrs.values())
    return out


def _names_digest(arguments: Any, leaf: Callable[[Any], str]) -> Any:
    """``digest_value`` of a declared node's ``arguments``: a list of node ids, short and not
    starting with '@', digests to itself (the common case, without a call per id)."""
    if type(arguments) is list:
        for a in arguments:
            if type(a) is not str or len(a) > 64 or a[:1] == "@":
                break
        else:
            return {"l": arguments}
    return digest_value(arguments, Ref, _ref_digest, leaf)


def _ref_digest(value: Ref) -> str:
    """A reference digests to its producer's content hash and the path taken into it (a
    declared input, read whole, as ``f"@{hash}()"``: ``MemoSide._on_ready``). What it reads
    under ``hash`` (``r["hash"]``, or the whole result ``r``) is the producer's key, not its
    content: that goes in too (two producers of equal values were one input, and a consumer
    got the other's hash)."""
    task, path = value._task, value._path
    if (not path or path[0] == "hash") and not task.spec.raw_result:
        return f"@{task.content_hash}#{task.cache_key}{path!r}"
    return f"@{task.content_hash}{path!r}"
