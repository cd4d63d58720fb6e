"""GA clustering (E2LLM's "form the groups with a genetic algorithm").

Encoding
--------
A chromosome gives every device a gene — the replica it belongs to (``0 .. k-1``) or ``-1``
(unused) — and every replica a role (``prefill``, ``decoder`` or, unless excluded, ``both``)::

    genes = [0, 0, 1, -1, 1, 2]      roles = ["prefill", "decoder", "prefill"]

Internally a chromosome is kept *decoded*, as its groups with their roles (the canonical
grouping of :mod:`e2llm_lite.planning.problem`); :func:`encode` / :func:`decode` convert.
Decoding = the DP plans each group for its role (cached per group and role), the evaluator
(:func:`~e2llm_lite.planning.queueing.predict`) turns the replicas into the **fitness**: the
predicted mean waiting time (s) at the target rate, or a penalty when overloaded — lower is better.

Operators
---------
* **Random individual** (initial population): :func:`~e2llm_lite.planning.problem.random_grouping`
  (groups filled in random order until they hold the model, by the exact memory test).
* **Selection**: tournament of 3 (the fittest of 3 random individuals).
* **Crossover** (probability 0.9; grouping-GA style, since a replica is a group): the child keeps
  each of parent A's groups with probability 1/2, then receives parent B's groups in random order,
  minus the devices it already has; other devices are unused.
* **Mutations** (probability 0.7 per child, then a second one with probability 0.3), one of:
  *move* (a device to another group, to a new group or out of use), *swap* (two devices of
  different groups / unused), *split* (a group into two halves that can both hold the model —
  up to 8 tries of memory-balanced halves: devices in random order, each to the half with less
  memory — else a random cut; the second half keeps the role or gets a random one), *merge* (two groups into one, with one of their roles), *flip role* (a group gets another
  role).
* **Repair** (after crossover and mutation): :func:`~e2llm_lite.planning.problem.repair` (top up,
  merge or dissolve the groups that cannot hold the model for their role). An individual left
  without groups is replaced by a fresh random one.
* **Elitism**: the 2 best individuals pass unchanged; a child identical to an individual already
  in the new population, or with the same fitness (9 significant digits: a neutral variant), is
  mutated again (up to 3 times) to keep diversity.
* **Local search** (memetic step): each generation, if the best individual is new, first-improvement
  hill climbing from it over: flip a role, move a device (to another group or out of use), swap two
  devices, take two devices of a group out of use (a replica's value is not monotone in its devices);
  at most ``polish_budget`` evaluations (150; 50 above 16 devices); the result replaces the worst.
* **Stop**: after ``generations`` (200) generations or ``patience`` (50; 30 above 16 devices)
  generations without improvement of
  the best fitness (an improvement must exceed 0.01 % plus 0.1 ms: waiting times below a tenth
  of a millisecond are all "no waiting").

The initial population (40; 30 above 16 devices) can start from given groupings: ``initial``
(as they are) and ``seeds``, a function the GA calls once at its start (its evaluations count in
the history) whose groupings are repaired into the search space — the planner
(:func:`e2llm_lite.planning.plan_e2llm`) passes
:func:`~e2llm_lite.planning.baselines.seed_groupings` (Splitwise with its tuned roles, colocated,
single pipeline), so the GA starts from the baselines. Everything random comes from one
``numpy.random.Generator(seed)``: the same seed gives the same plan and history.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from .problem import Grouping, SearchProblem, canonical, fits, random_grouping, repair, swap_devices

__all__ = ["GAConfig", "History", "decode", "encode", "ga_search"]


@dataclass(frozen=True)
class GAConfig:
    """GA parameters (module docstring). ``population``, ``patience`` (generations without
    improvement before stopping) and ``polish_budget`` (evaluations per local search) default by
    cluster size: 40, 50 and 150 up to 16 devices; 30, 30 and 50 above (there every evaluation
    plans new groups and costs more)."""

    population: int | None = None
    generations: int = 200
    patience: int | None = None
    tournament: int = 3
    crossover_rate: float = 0.9
    mutation_rate: float = 0.7
    elite: int = 2
    polish_budget: int | None = None
    distinct_fitness: bool = True

    def resolved(self, n_devices: int) -> "GAConfig":
        """This config with the size-dependent defaults filled in."""
        small = n_devices <= 16
        return replace(self, population=self.population or (40 if small else 30),
                       patience=self.patience or (50 if small else 30),
                       polish_budget=(150 if small else 50) if self.polish_budget is None
                       else self.polish_budget)


@dataclass
class History:
    """Convergence record: per generation (0 = the initial population) the best and mean
    fitness of the population, the best so far, and the cumulative number of distinct
    evaluations; ``seconds`` of wall time; ``stopped_early``."""

    best: list[float] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    median: list[float] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    seconds: float = 0.0
    stopped_early: bool = False
    #: the last population's distinct groupings with their fitness, best first (the candidates a
    #: caller may re-rank, e.g. by simulation)
    final: list = field(default_factory=list, repr=False)

    @property
    def generations(self) -> int:
        return max(0, len(self.best) - 1)

    def to_dict(self) -> dict:
        return {"best": self.best, "mean": self.mean, "median": self.median,
                "evaluations": self.evaluations, "generations": self.generations,
                "seconds": round(self.seconds, 3), "stopped_early": self.stopped_early}


# --------------------------------------------------------------------------------------------
# encoding
# --------------------------------------------------------------------------------------------


def encode(grouping: Grouping, n_devices: int) -> tuple[list[int], list[str]]:
    """(genes, roles) of a grouping: ``genes[d]`` = replica index of device d or -1."""
    genes = [-1] * n_devices
    roles = []
    for k, (g, role) in enumerate(grouping):
        for d in g:
            genes[d] = k
        roles.append(role)
    return genes, roles


def decode(genes, roles) -> Grouping:
    """The canonical grouping of a gene vector and the roles of its replicas."""
    groups: dict[int, list[int]] = {}
    for d, k in enumerate(genes):
        if k >= 0:
            groups.setdefault(int(k), []).append(d)
    return canonical((g, roles[k]) for k, g in groups.items())


# --------------------------------------------------------------------------------------------
# operators
# --------------------------------------------------------------------------------------------


def _crossover(a: Grouping, b: Grouping, rng: np.random.Generator) -> list:
    child = [[set(g), r] for g, r in a if rng.random() < 0.5]
    taken = set().union(*(g for g, _ in child)) if child else set()
    for k in rng.permutation(len(b)):
        g, r = b[k]
        rest = set(g) - taken
        if rest:
            child.append([rest, r])
            taken |= rest
    return child


def _mutate(problem: SearchProblem, ind: Grouping, rng: np.random.Generator) -> list:
    groups = [[set(g), r] for g, r in ind]
    roles = problem.roles
    kinds = ["move", "swap", "flip"]
    if any(len(g) >= 2 for g, _ in groups):
        kinds.append("split")
    if len(groups) >= 2:
        kinds.append("merge")
    kind = kinds[rng.integers(len(kinds))]
    where = {d: k for k, (g, _) in enumerate(groups) for d in g}
    if kind == "move":
        d = int(rng.integers(problem.n))
        src = where.get(d)
        if src is not None:
            groups[src][0].discard(d)
        choices = [k for k in range(len(groups)) if k != src] + ["new", "unused"]
        dst = choices[rng.integers(len(choices))]
        if dst == "new":
            groups.append([{d}, roles[rng.integers(len(roles))]])
        elif dst != "unused":
            groups[dst][0].add(d)
    elif kind == "swap":
        d, e = (int(x) for x in rng.choice(problem.n, 2, replace=False))
        if where.get(d) != where.get(e):
            swap_devices(groups, where, d, e)
    elif kind == "flip" and groups:
        k = int(rng.integers(len(groups)))
        others = [r for r in roles if r != groups[k][1]]
        if others:
            groups[k][1] = others[rng.integers(len(others))]
    elif kind == "split":
        big = [k for k, (g, _) in enumerate(groups) if len(g) >= 2]
        k = big[rng.integers(len(big))]
        members = sorted(groups[k][0])
        role = groups[k][1] if rng.random() < 0.5 else roles[rng.integers(len(roles))]
        first, second = _split(problem, members, groups[k][1], role, rng)
        groups[k][0] = set(first)
        groups.append([set(second), role])
    elif kind == "merge":
        i, j = (int(x) for x in rng.choice(len(groups), 2, replace=False))
        role = groups[i][1] if rng.random() < 0.5 else groups[j][1]
        groups[i] = [groups[i][0] | groups[j][0], role]
        groups.pop(j)
    return groups


def _split(problem: SearchProblem, members: list[int], role_a: str, role_b: str,
           rng: np.random.Generator, attempts: int = 8) -> tuple[list[int], list[int]]:
    """Split a group in two: up to ``attempts`` memory-balanced splits (devices in random order,
    each joining the half with less memory so far) until both halves can serve their roles;
    failing that, a random cut."""
    for _ in range(attempts):
        order = [members[i] for i in rng.permutation(len(members))]
        halves, load = ([], []), [0.0, 0.0]
        for d in order:
            h = 0 if load[0] <= load[1] else 1
            halves[h].append(d)
            load[h] += problem.mem[d]
        if halves[1] and fits(problem, halves[0], role_a) and fits(problem, halves[1], role_b):
            return halves
    order = [members[i] for i in rng.permutation(len(members))]
    cut = int(rng.integers(1, len(order)))
    return order[:cut], order[cut:]


def _neighbours(problem: SearchProblem, ind: Grouping, rng: np.random.Generator):
    """The local-search neighbourhood of a grouping, in random order: flip one group's role,
    move one device (to another group or out of use), swap two devices of different groups (or
    one unused), take two devices of one group out of use (a replica's value is not monotone in
    its devices: the DP may do better on a subset). Yields lists of [set, role] (not repaired)."""
    groups = [(set(g), r) for g, r in ind]
    where = {d: k for k, (g, _) in enumerate(groups) for d in g}
    moves = []
    for k, (_, r) in enumerate(groups):
        moves += [("flip", k, r2) for r2 in problem.roles if r2 != r]
    for d in range(problem.n):
        moves += [("move", d, k) for k in range(len(groups)) if k != where.get(d)]
        if d in where:
            moves.append(("move", d, None))
    for d in range(problem.n):
        for e in range(d + 1, problem.n):
            if where.get(d) != where.get(e):
                moves.append(("swap", d, e))
            elif d in where:
                moves.append(("drop2", d, e))
    for i in rng.permutation(len(moves)):
        kind, x, y = moves[i]
        new = [[set(g), r] for g, r in groups]
        if kind == "flip":
            new[x][1] = y
        elif kind == "move":
            if x in where:
                new[where[x]][0].discard(x)
            if y is not None:
                new[y][0].add(x)
        elif kind == "drop2":
            new[where[x]][0] -= {x, y}
        else:
            swap_devices(new, where, x, y)
        yield new


def _polish(problem: SearchProblem, ind: Grouping, fit: float, rng: np.random.Generator,
            budget: int) -> tuple[Grouping, float]:
    """First-improvement hill climbing over :func:`_neighbours` (neighbours whose groups cannot
    all serve their roles are skipped, not repaired), at most ``budget`` new evaluations."""
    start = problem.evaluations
    improved = True
    while improved and problem.evaluations - start < budget:
        improved = False
        for new in _neighbours(problem, ind, rng):
            if problem.evaluations - start >= budget:
                break
            g = canonical(new)
            if not g or any(len(d) > problem.max_size or not fits(problem, d, r) for d, r in g):
                continue
            f = problem.score(g)
            if f < fit * (1 - 1e-12):
                ind, fit, improved = g, f, True
                break
    return ind, fit


def _rounded(f: float) -> float:
    return float(f"{f:.9g}")


def _tournament(fit: list[float], k: int, rng: np.random.Generator) -> int:
    idx = rng.choice(len(fit), size=min(k, len(fit)), replace=False)
    return int(min(idx, key=lambda i: (fit[i], i)))


# --------------------------------------------------------------------------------------------
# the GA
# --------------------------------------------------------------------------------------------


def ga_search(problem: SearchProblem, config: GAConfig | None = None, seed: int = 0,
              progress: bool | None = None, initial: list[Grouping] | None = None,
              seeds: Callable[[SearchProblem], list[Grouping]] | None = None
              ) -> tuple[Grouping, float, History]:
    """Run the GA of the module docstring on ``problem``.

    Returns ``(best grouping, its fitness, History)``. ``progress``: a tqdm bar on stderr
    (default: only when stderr is a terminal). ``initial``: extra groupings for the first
    population. ``seeds``: a function of the problem giving groupings to repair into the first
    population, e.g. :func:`e2llm_lite.planning.baselines.seed_groupings`; groupings with a role
    the problem does not allow are skipped.
    """
    cfg = (config or GAConfig()).resolved(problem.n)
    if cfg.population < 2 or cfg.elite < 0 or cfg.elite >= cfg.population:
        raise ValueError("population must be >= 2 and 0 <= elite < population")
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    problem.check_cluster()
    start_evals = problem.evaluations

    pop: list[Grouping] = []
    start = list(initial or [])
    for g in seeds(problem) if seeds is not None else []:
        if g and all(r in problem.roles for _, r in g):
            g = repair(problem, [[set(d), r] for d, r in g], rng)
            if g:
                start.append(g)
    for g in start:
        if g and g not in pop and len(pop) < cfg.population:
            pop.append(g)
    tries = 0
    while len(pop) < cfg.population and tries < 20 * cfg.population:
        tries += 1
        g = random_grouping(problem, rng)
        if g and g not in pop:
            pop.append(g)
    while len(pop) < cfg.population:  # tiny search spaces: duplicates are fine
        pop.append(pop[len(pop) % max(1, len(pop))] if pop else random_grouping(problem, rng))
    fit = [problem.score(g) for g in pop]

    hist = History()

    def record():
        finite = [f for f in fit]
        hist.best.append(min(min(fit), hist.best[-1] if hist.best else math.inf))
        hist.mean.append(float(np.mean(finite)))
        hist.median.append(float(np.median(finite)))
        hist.evaluations.append(problem.evaluations - start_evals)

    record()
    if progress is None:
        progress = sys.stderr.isatty()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.generations, desc="GA", unit="gen", leave=False)
    stale = 0
    polished: set = set()
    i = min(range(len(pop)), key=lambda i: (fit[i], pop[i]))
    best = (pop[i], fit[i])  # best ever (elitism keeps it in the population too)
    try:
        for _gen in range(cfg.generations):
            ranked = sorted(range(len(pop)), key=lambda i: (fit[i], pop[i]))
            new = [pop[i] for i in ranked[: cfg.elite]]
            new_fit = [fit[i] for i in ranked[: cfg.elite]]
            keys = set(new)
            fits = {_rounded(f) for f in new_fit}
            while len(new) < cfg.population:
                a = pop[_tournament(fit, cfg.tournament, rng)]
                b = pop[_tournament(fit, cfg.tournament, rng)]
                child = _crossover(a, b, rng) if rng.random() < cfg.crossover_rate else [[set(g), r] for g, r in a]
                for attempt in range(4):
                    if attempt > 0 or rng.random() < cfg.mutation_rate:
                        child = _mutate(problem, canonical(child), rng)
                        if rng.random() < 0.3:
                            child = _mutate(problem, canonical(child), rng)
                    g = repair(problem, child, rng)
                    if not g:
                        g = random_grouping(problem, rng)
                    f = problem.score(g)
                    if g not in keys and (not cfg.distinct_fitness or _rounded(f) not in fits):
                        break
                    child = [[set(x), r] for x, r in g]
                new.append(g)
                keys.add(g)
                fits.add(_rounded(f))
                new_fit.append(f)
            prev = hist.best[-1]
            pop, fit = new, new_fit
            if cfg.polish_budget > 0:
                i = min(range(len(pop)), key=lambda i: (fit[i], pop[i]))
                if pop[i] not in polished:
                    g, f = _polish(problem, pop[i], fit[i], rng, cfg.polish_budget)
                    polished.add(pop[i])
                    polished.add(g)
                    if g not in pop:
                        worst = max(range(len(pop)), key=lambda j: (fit[j], pop[j]))
                        pop[worst], fit[worst] = g, f
            record()
            i = min(range(len(pop)), key=lambda i: (fit[i], pop[i]))
            if fit[i] < best[1]:
                best = (pop[i], fit[i])
            if bar is not None:
                bar.update(1)
                bar.set_postfix(best=f"{hist.best[-1]:.4g}", evals=hist.evaluations[-1])
            if hist.best[-1] < prev * (1 - 1e-4) - 1e-4:  # a real improvement (module docstring)
                stale = 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    hist.stopped_early = True
                    break
    finally:
        if bar is not None:
            bar.close()
    hist.seconds = time.perf_counter() - t0
    final = dict(zip(pop, fit))
    final[best[0]] = best[1]
    hist.final = sorted(final.items(), key=lambda gf: (gf[1], gf[0]))
    return best[0], best[1], hist
