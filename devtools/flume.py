"""Apache Flume's own Java code from Maven Central, for tests and the benchmark.

    python -m devtools.flume fetch        # resolve flume-ng-node/sdk/core, the Kafka sink, log4j

The jars (``devtools/flume-pom.xml``) are cached under ``~/.cache/spillway`` (or
``$SPILLWAY_KAFKA_CACHE``). :func:`agent` runs Flume's own agent
(``org.apache.flume.node.Application``) on a properties file; :func:`java` compiles a small
Java program against Flume's SDK once and runs it (a real ``RpcClient``: what Flume's users
send with). Nothing here is mocked; a missing Maven or Java is an error, never a skip.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

FLUME_VERSION = "1.11.0"
POM = Path(__file__).with_name("flume-pom.xml")


def cache_dir() -> Path:
    root = os.environ.get("SPILLWAY_KAFKA_CACHE") or Path.home() / ".cache" / "spillway"
    return Path(root) / f"flume-{FLUME_VERSION}"


def fetch() -> Path:
    """Resolve Flume's jars from Maven Central once; return the folder holding them."""
    libs = cache_dir() / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise RuntimeError("flume: Maven (mvn) is needed to fetch Apache Flume from Maven Central")
    tmp = libs.with_name("libs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    print(f"flume: fetching Apache Flume {FLUME_VERSION} from Maven Central ...", file=sys.stderr)
    r = subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
                        f"-DoutputDirectory={tmp}"], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"flume: could not resolve Apache Flume from Maven Central: {r.stdout[-800:]}")
    shutil.rmtree(libs, ignore_errors=True)
    tmp.rename(libs)
    (libs / ".complete").write_text(FLUME_VERSION)
    return libs


def classpath() -> str:
    return f"{fetch()}/*"


def agent_command(conf: Path, name: str = "a1", heap: str = "256m") -> list[str]:
    """The command line of Flume's own agent for a properties file (start it as you like)."""
    return ["java", f"-Xmx{heap}", "-cp", classpath(), "org.apache.flume.node.Application",
            "-n", name, "-f", str(conf)]


def compile_java(source: str, class_name: str) -> Path:
    """Compile one Java class against Flume's jars (once per source text); its class folder."""
    digest = hashlib.sha256(source.encode()).hexdigest()[:16]
    out = cache_dir() / "classes" / f"{class_name}-{digest}"
    if (out / f"{class_name}.class").exists():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / f"{class_name}.java").write_text(source)
    subprocess.run(["javac", "-nowarn", "-cp", classpath(), "-d", str(tmp), str(tmp / f"{class_name}.java")],
                   check=True, capture_output=True, text=True)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def java(source: str, class_name: str, *args: str, timeout: float = 120.0,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Compile (once) and run a Java program against Flume's jars; its completed process."""
    classes = compile_java(source, class_name)
    return subprocess.run(["java", "-Xmx256m", "-cp", f"{classes}:{classpath()}", class_name, *args],
                          capture_output=True, text=True, timeout=timeout, input=input)


if __name__ == "__main__":
    if sys.argv[1:] == ["fetch"]:
        print(fetch())
    else:
        raise SystemExit(__doc__)
