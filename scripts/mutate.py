"""`make mutate`: mutation testing (mutmut 3) of the modules that handle money and trust, with their tests.

    .venv/bin/python scripts/mutate.py                 # every module below but lifecycle (hours), in turn
    .venv/bin/python scripts/mutate.py costs binding   # some of them
    .venv/bin/python scripts/mutate.py --list          # the table

Each module runs in its own copy of the tree, `.build/mutate/<module>/` (the package at the top, as mutmut wants
it, so the shared checkout is never mutated in place), with the tests that exercise it; the mutated package
shadows the editable install there (mutmut puts `mutants/` first on sys.path). One embedded PostgreSQL and Redis
serve every mutant (GANTRY_TEST_DATABASE_URL / GANTRY_TEST_REDIS_URL, unless already set), so a forked test run
does not start its own. The score per module is killed / (mutants - equivalents): a surviving mutant counts as
equivalent only when its change is listed in EQUIVALENT below, with the reason (docs/testing.md repeats them).
Afterwards `cd .build/mutate/<module> && ../../../.venv/bin/mutmut show <name>` shows any mutant.

Exit status 1 when a module scores under TARGET (the survivors are printed as diffs).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".build" / "mutate"
MUTMUT = Path(sys.executable).parent / "mutmut"
TARGET = 95.0


@dataclass(frozen=True)
class Module:
    files: tuple[str, ...]  # under server/gantry_server/
    tests: tuple[str, ...]
    functions: tuple[str, ...] = ()  # only mutants of these functions/methods (all when empty)
    forkserver: bool = False  # tests that start gRPC servers: fork workers from a clean process


MODULES: dict[str, Module] = {
    "signatures": Module(("domain/auth/signatures.py",), (
        "tests/unit/test_auth_signatures.py", "tests/unit/test_signed_requests_strength.py",
        "tests/unit/test_signatures_strength.py")),
    "nonces": Module(("domain/auth/nonces.py", "domain/auth/signature_nonces.py"), (
        "tests/integration/test_auth_nonces.py", "tests/integration/test_nonces_strength.py")),
    "costs": Module(("broker/costs.py",), (
        "tests/unit/test_broker_costs.py", "tests/unit/test_costs_strength.py",
        "tests/integration/test_broker_costs.py", "tests/integration/test_costs_strength.py"), forkserver=True),
    "binding": Module(("domain/attestation/binding.py",), (
        "tests/unit/test_tdx_quote.py", "tests/unit/test_binding_strength.py")),
    "measurements": Module(("domain/attestation/measurements.py",), (
        "tests/unit/test_tdx_quote.py", "tests/unit/test_measurements_strength.py")),
    "secrets_at_rest": Module(("domain/secrets_at_rest.py",), (
        "tests/unit/test_auth_secrets_at_rest.py", "tests/unit/test_secrets_at_rest_strength.py")),
    # The session state transitions that end a session (and bill it): terminate -> stopping -> stopped/failed,
    # done/destroy/extend. Their tests drive real provider fakes through the lifecycle: minutes per mutant.
    "lifecycle": Module(("broker/sessions.py",), ("tests/integration/test_broker_sessions.py",),
                        functions=("terminate", "finish_stopping", "done", "destroy", "extend", "billing_end"),
                        forkserver=True),
}

ON_REQUEST = {"lifecycle"}  # hours, not minutes: run only when named

# Survivors judged equivalent: (module, the line removed, the line added), as `mutmut show` prints them with
# surrounding spaces stripped, and why no test can tell them apart. docs/testing.md lists the same.
_CLOSEST = "_, _, closest, differ = min(scored, key=lambda s: (s[0], s[1]))"
_NAMES = 'names = " and ".join(differ) if len(differ) {} 2 else ", ".join(differ[:-1]) + " and " + differ[-1]'
_WHERE = 'where = "in the future" if skew {} else "old"'
_CERT_MSG = ('f"report_data[32:64] is {{quote.report_data[32:{}].hex()}}, expected sha256 of the client '
             'certificate\'s "')
_NO_KEY = ("min() over (differing count, name, entry, registers) compares the name next; names are unique (merge() "
           "keys entries by name), so the entry itself is never compared and the closest entry is the same")
_REPORT_DATA = "a quote's report_data is exactly 64 bytes (quote.py parses a fixed layout): [32:65] is [32:64]"
_SKEW = "the branch runs only when |skew| >= 600, where skew > 0, skew >= 0 and skew > 1 agree"
_EMPTY = "the default only avoids None: '' and 'XXXX' both fail the 64-hex pattern"
_VALIDATE = ("self._check(await self.redis.get(redis_keys.boot_token(token)) if _HEX64.match(token or {}) else None,")
_NO_VALUE = "with no stored value _check refuses before it reads the hotkey or the VM name"
_CODEC = "codec names are case-insensitive: 'ASCII' is 'ascii'"
_SET_NX = 'await conn.send_command("SET", key, b"1", {}, max(1, int(seconds)))'
_REDIS_CASE = "Redis reads command names and options case-insensitively: set is SET, nx is NX, ex is EX"
_LIVE = "return session.recorded_amount + sum((amount for _, _, amount in _live_rows(session, now)){})"
_HKDF = 'return HKDF(algorithm=hashes.SHA256(), length=32, {}info=b"gantry:" + purpose).derive(raw)'
EQUIVALENT: dict[tuple[str, str, str], str] = {
    ("measurements", _CLOSEST, "_, _, closest, differ = min(scored, key=None)"): _NO_KEY,
    ("measurements", _CLOSEST, "_, _, closest, differ = min(scored, )"): _NO_KEY,
    ("measurements", _NAMES.format("<="), _NAMES.format("<")):
        "two registers read the same either way: ', '.join([a]) + ' and ' + b is 'a and b'",
    ("signatures", _WHERE.format("> 0"), _WHERE.format(">= 0")): _SKEW,
    ("signatures", _WHERE.format("> 0"), _WHERE.format("> 1")): _SKEW,
    ("binding", "if quote.report_data[32:64] != want:", "if quote.report_data[32:65] != want:"): _REPORT_DATA,
    ("binding", _CERT_MSG.format(64), _CERT_MSG.format(65)): _REPORT_DATA,
    ("nonces", 'if not _HEX64.match(nonce or ""):', 'if not _HEX64.match(nonce or "XXXX"):'): _EMPTY,
    ("nonces", 'if not _HEX64.match(token or ""):', 'if not _HEX64.match(token or "XXXX"):'): _EMPTY,
    ("nonces", _VALIDATE.format('""'), _VALIDATE.format('"XXXX"')): _EMPTY,
    ("nonces", "token = secrets.token_hex(32)", "token = secrets.token_hex(None)"):
        "secrets.token_hex(None) is 32 bytes too (the module's default entropy)",
    ("nonces", "nonce = secrets.token_hex(32)", "nonce = secrets.token_hex(None)"):
        "secrets.token_hex(None) is 32 bytes too (the module's default entropy)",
    ("nonces", _SET_NX.format('"NX", "EX"'), _SET_NX.format('"nx", "EX"')): _REDIS_CASE,
    ("nonces", _SET_NX.format('"NX", "EX"'), _SET_NX.format('"NX", "ex"')): _REDIS_CASE,
    ("nonces", 'await conn.send_command("SET", key, b"1", "NX", "EX", max(1, int(seconds)))',
     'await conn.send_command("set", key, b"1", "NX", "EX", max(1, int(seconds)))'): _REDIS_CASE,
    ("nonces", "self._check(None, hotkey, vm_name)", "self._check(None, None, vm_name)"): _NO_VALUE,
    ("nonces", "self._check(None, hotkey, vm_name)", "self._check(None, hotkey, None)"): _NO_VALUE,
    ("nonces", "stored = value.decode() if isinstance(value, bytes) else value",
     "stored = value.decode() if (isinstance(value, bytes)) or True else value"):
        "Gantry's Redis clients never set decode_responses, so a stored token is always bytes",
    ("secrets_at_rest", "write_secret_file(path, base64.b64encode(secrets.token_bytes(32)).decode())",
     "write_secret_file(path, base64.b64encode(secrets.token_bytes(None)).decode())"):
        "secrets.token_bytes(None) is 32 bytes too (the module's default entropy)",
    ("secrets_at_rest", 'kid = blob[5:5 + n].decode("ascii", "replace")',
     'kid = blob[5:5 + n].decode("ASCII", "replace")'): _CODEC,
    ("secrets_at_rest", 'return blob[5:5 + blob[4]].decode("ascii", "replace")',
     'return blob[5:5 + blob[4]].decode("ASCII", "replace")'): _CODEC,
    ("secrets_at_rest", _HKDF.format("salt=None, "), _HKDF.format("")): "HKDF's salt defaults to None",
    ("costs", "_ON_COMMIT.get(sync, []).clear()", "_ON_COMMIT.get(sync, None).clear()"):
        "the rollback listener is attached only after the connection's queue exists, so the default is never used",
    ("costs", _LIVE.format(", ZERO"), _LIVE.format(", ")):
        "the same value (Decimal + int 0), and callers render the amount as a number, never by its exponent",
}


def _mutmut_config(module: Module) -> str:
    def toml_list(items) -> str:
        return "[" + ", ".join(f'"{i}"' for i in items) + "]"

    return (
        "\n[tool.mutmut]\n"
        'source_paths = ["gantry_server"]\n'
        f"only_mutate = {toml_list('gantry_server/' + f for f in module.files)}\n"
        f"pytest_add_cli_args_test_selection = {toml_list(module.tests)}\n"
        'pytest_add_cli_args = ["-p", "no:cacheprovider", "-W", "ignore", "-q"]\n'
        "use_git_change_detection = false\n"
        f'process_isolation = "{"forkserver" if module.forkserver else "fork"}"\n')


def prepare(name: str, module: Module) -> Path:
    """A fresh copy of the package and the tests with the module's [tool.mutmut] section."""
    work = WORK / name
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "server" / "gantry_server", work / "gantry_server", ignore=ignore)
    shutil.copytree(ROOT / "tests", work / "tests", ignore=ignore)
    (work / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text() + _mutmut_config(module))
    return work


def _patterns(module: Module) -> list[str]:
    """mutmut run's name filter for `functions`: module functions are x_<name>, methods xǁClassǁ<name>."""
    out = []
    for file in module.files:
        dotted = "gantry_server." + file.removesuffix(".py").replace("/", ".")
        for fn in module.functions:
            out += [f"{dotted}.x_{fn}__mutmut_*", f"{dotted}.xǁ*ǁ{fn}__mutmut_*"]
    return out


@dataclass
class Result:
    name: str
    statuses: dict[str, list[str]] = field(default_factory=dict)
    equivalent: list[str] = field(default_factory=list)
    survivors: list[tuple[str, str]] = field(default_factory=list)  # (mutant, diff)
    seconds: float = 0.0

    def count(self, *statuses: str) -> int:
        return sum(len(self.statuses.get(s, [])) for s in statuses)

    @property
    def total(self) -> int:
        return sum(len(v) for v in self.statuses.values())

    @property
    def killed(self) -> int:
        return self.count("killed", "timeout")

    @property
    def score(self) -> float:
        denominator = self.total - len(self.equivalent)
        return 100.0 * self.killed / denominator if denominator else 100.0


def _diff(work: Path, mutant: str) -> tuple[str, str, str]:
    out = subprocess.run([str(MUTMUT), "show", mutant], cwd=work, capture_output=True, text=True).stdout
    removed = [l[1:].strip() for l in out.splitlines() if l.startswith("-") and not l.startswith("---")]
    added = [l[1:].strip() for l in out.splitlines() if l.startswith("+") and not l.startswith("+++")]
    return " / ".join(removed), " / ".join(added), out


def run(name: str, module: Module, children: int, env: dict[str, str]) -> Result:
    work = prepare(name, module)
    started = time.monotonic()
    log = work / "mutmut.log"
    with log.open("w") as out:
        code = subprocess.run([str(MUTMUT), "run", "--max-children", str(children), *_patterns(module)], cwd=work,
                              env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    result = Result(name, seconds=time.monotonic() - started)
    listing = subprocess.run([str(MUTMUT), "results", "--all", "true"], cwd=work, env=env, capture_output=True,
                             text=True).stdout
    wanted = [re.compile(p.replace(".", r"\.").replace("*", ".*") + "$") for p in _patterns(module)]
    for line in listing.splitlines():
        mutant, _, status = line.strip().rpartition(": ")
        if not mutant or (wanted and not any(w.match(mutant) for w in wanted)):
            continue
        result.statuses.setdefault(status, []).append(mutant)
    if code != 0 or not result.total:
        tail = log.read_text()[-3000:]
        raise SystemExit(f"mutmut failed for {name} (exit {code}); see {log}:\n{tail}")
    for mutant in sorted(m for s, ms in result.statuses.items() if s not in ("killed", "timeout") for m in ms):
        removed, added, text = _diff(work, mutant)
        if (name, removed, added) in EQUIVALENT:
            result.equivalent.append(mutant)
        else:
            result.survivors.append((mutant, text))
    return result


def _services(env: dict[str, str]):
    """One embedded PostgreSQL + Redis for every mutant (unless the environment names servers)."""
    if env.get("GANTRY_TEST_DATABASE_URL") and env.get("GANTRY_TEST_REDIS_URL"):
        return None
    from gantry_server import embedded

    services = embedded.start(Path(tempfile.mkdtemp(prefix="gantry-mutate-")),
                              need_postgres=not env.get("GANTRY_TEST_DATABASE_URL"),
                              need_redis=not env.get("GANTRY_TEST_REDIS_URL"))
    env.setdefault("GANTRY_TEST_DATABASE_URL", services.database_url or "")
    env.setdefault("GANTRY_TEST_REDIS_URL", services.redis_url or "")
    return services


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", metavar="module",
                        help=f"some of: {', '.join(MODULES)} (default: all but {', '.join(sorted(ON_REQUEST))})")
    parser.add_argument("--children", type=int, default=2, help="parallel mutants (default 2)")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests, run nothing")
    args = parser.parse_args(argv)
    if unknown := [m for m in args.modules if m not in MODULES]:
        parser.error(f"unknown module(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
    names = args.modules or [m for m in MODULES if m not in ON_REQUEST]
    if args.list:
        for name in names:
            m = MODULES[name]
            print(f"{name}: {', '.join(m.files)}{' (' + ', '.join(m.functions) + ')' if m.functions else ''}\n"
                  f"    {' '.join(m.tests)}")
        return 0
    env = dict(os.environ)
    services = _services(env)
    results = []
    try:
        for name in names:
            print(f"mutate: {name} ...", file=sys.stderr, flush=True)
            results.append(run(name, MODULES[name], args.children, env))
    finally:
        if services is not None:
            services.stop()
    print(f"\n{'module':<16} {'mutants':>7} {'killed':>6} {'equiv':>5} {'left':>4} {'score':>6} {'time':>6}")
    for r in results:
        print(f"{r.name:<16} {r.total:>7} {r.killed:>6} {len(r.equivalent):>5} {len(r.survivors):>4} "
              f"{r.score:>5.1f}% {r.seconds / 60:>5.1f}m")
    failing = [r for r in results if r.score < TARGET]
    for r in results:
        for mutant, text in r.survivors:
            print(f"\n--- {r.name}: {mutant}\n{text.strip()}")
    return 1 if failing else 0


if __name__ == "__main__":
    sys.exit(main())
