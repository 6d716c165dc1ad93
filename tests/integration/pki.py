"""A throwaway PKI for TLS tests, made with the JDK's keytool (the broker's JDK; no extra dependency):
a CA, a broker certificate it signs for 127.0.0.1/localhost (PKCS12 keystore for Kafka), the CA
certificate as PEM for Python clients, and a second, unrelated CA that trusts nothing here."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PASSWORD = "keystore-pw"


@dataclass(frozen=True)
class Pki:
    keystore: Path  # broker key + chain, PKCS12, PASSWORD
    ca_pem: Path  # the CA that signed it
    other_ca_pem: Path  # a CA that did not


def _keytool(*args: str) -> None:
    keytool = shutil.which("keytool")
    if keytool is None:
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("keytool not found (it comes with the JDK the broker runs on)")
        keytool = str(Path(java).resolve().parent / "keytool")
    done = subprocess.run([keytool, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise RuntimeError(f"keytool {args[0]} failed: {done.stdout}{done.stderr}")


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    store, pem = directory / f"{name}.p12", directory / f"{name}.pem"
    common = ("-storetype", "PKCS12", "-storepass", PASSWORD, "-keystore", str(store))
    _keytool(
        "-genkeypair",
        "-alias",
        name,
        "-keyalg",
        "RSA",
        "-keysize",
        "2048",
        "-validity",
        "2",
        "-dname",
        f"CN=livepulse test {name}",
        "-ext",
        "bc:c",
        *common,
    )
    _keytool("-exportcert", "-rfc", "-alias", name, "-file", str(pem), *common)
    return store, pem


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca_store, ca_pem = _ca(directory, "ca")
    _, other_pem = _ca(directory, "other-ca")
    keystore = directory / "broker.p12"
    broker = ("-storetype", "PKCS12", "-storepass", PASSWORD, "-keystore", str(keystore))
    _keytool(
        "-genkeypair",
        "-alias",
        "broker",
        "-keyalg",
        "RSA",
        "-keysize",
        "2048",
        "-validity",
        "2",
        "-dname",
        "CN=localhost",
        *broker,
    )
    csr, crt = directory / "broker.csr", directory / "broker.crt"
    _keytool("-certreq", "-alias", "broker", "-file", str(csr), *broker)
    _keytool(
        "-gencert",
        "-alias",
        "ca",
        "-infile",
        str(csr),
        "-outfile",
        str(crt),
        "-rfc",
        "-validity",
        "2",
        "-ext",
        "SAN=IP:127.0.0.1,DNS:localhost",
        "-ext",
        "EKU=serverAuth",
        "-storetype",
        "PKCS12",
        "-storepass",
        PASSWORD,
        "-keystore",
        str(ca_store),
    )
    _keytool("-importcert", "-noprompt", "-alias", "ca", "-file", str(ca_pem), *broker)
    _keytool("-importcert", "-alias", "broker", "-file", str(crt), *broker)
    return Pki(keystore, ca_pem, other_pem)
