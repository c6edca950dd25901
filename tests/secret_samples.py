"""A labelled set for the secret scan: real secrets, and what real workspaces hold that only looks like one.

True secrets are generated at each run (keys by ``cryptography``, tokens by
``secrets``), so none is ever committed here, where a host's push
protection would rightly refuse this repository. Each sample is a file as a
Windmill export holds it; ``secret`` says what the file must yield: the
detector's name, or None for a lookalike that must yield nothing.
"""

from __future__ import annotations

import base64
import json
import secrets
import string
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

ALNUM = string.ascii_letters + string.digits
PRIVATE_KEY = "Private Key"


@dataclass(frozen=True)
class Sample:
    name: str
    path: str  # in the export
    content: str
    secret: str | None  # the detector that must find it; None: a lookalike
    value: str = ""  # the secret's text, which must never appear in an answer


def _random(n: int, alphabet: str = ALNUM) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def _pem(key: object, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(  # type: ignore[attr-defined, no-any-return]
        serialization.Encoding.PEM, fmt, serialization.NoEncryption()
    ).decode()


def rsa_pkcs1() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pem(key, serialization.PrivateFormat.TraditionalOpenSSL)


def rsa_pkcs8() -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return _pem(key, serialization.PrivateFormat.PKCS8)


def ec_sec1() -> str:
    return _pem(
        ec.generate_private_key(ec.SECP256R1()), serialization.PrivateFormat.TraditionalOpenSSL
    )


def openssh_ed25519() -> str:
    return _pem(ed25519.Ed25519PrivateKey.generate(), serialization.PrivateFormat.OpenSSH)


def github_classic() -> str:
    return "ghp_" + _random(36)


def github_fine_grained() -> str:
    return f"github_pat_{_random(22)}_{_random(59)}"


def aws_key_id() -> str:
    return "AKIA" + _random(16, string.ascii_uppercase + string.digits)


def aws_secret() -> str:
    return _random(40, ALNUM + "/+")


def slack_bot() -> str:
    return f"xoxb-{_random(12, string.digits)}-{_random(13, string.digits)}-{_random(24).lower()}"


def stripe_live() -> str:
    return "sk_live_" + _random(24)


def openai_key() -> str:
    return f"sk-proj-{_random(20)}T3BlbkFJ{_random(20)}"


def jwt() -> str:
    def part(data: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    claims = {"sub": _random(12), "role": "service_role", "iat": 1767225600}
    signature = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
    return f"{part({'alg': 'HS256', 'typ': 'JWT'})}.{part(claims)}.{signature}"


def py(*lines: str) -> str:
    return "\n".join(["import requests", "", *lines, "", "def main():", "    return 1", ""])


def ts(*lines: str) -> str:
    return "\n".join([*lines, "", "export async function main() {", "  return 1;", "}", ""])


def true_secrets() -> list[Sample]:
    """Each a new secret, in the places Windmill users put them."""
    pkcs1, pkcs8, sec1, openssh = rsa_pkcs1(), rsa_pkcs8(), ec_sec1(), openssh_ed25519()
    classic, fine, key_id, secret_key = (
        github_classic(),
        github_fine_grained(),
        aws_key_id(),
        aws_secret(),
    )
    slack, stripe, openai, token = slack_bot(), stripe_live(), openai_key(), jwt()
    block = "".join(f"    {line}\n" for line in pkcs8.strip().splitlines())
    escaped = "".join(f"\\x{ord(c):02x}" if c == "g" else c for c in classic[:1]) + classic[1:]
    return [
        Sample(
            "rsa-pkcs1-in-python",
            "f/keys/rsa.py",
            py(f'KEY = """{pkcs1}"""'),
            PRIVATE_KEY,
            pkcs1.splitlines()[1],
        ),
        Sample(
            "rsa-pkcs8-in-resource-block",
            "f/keys/sa.resource.yaml",
            f"description: ''\nresource_type: gcp_service_account\nvalue:\n  private_key: |-\n{block}",
            PRIVATE_KEY,
            pkcs8.splitlines()[1],
        ),
        Sample(
            "ec-in-typescript",
            "f/keys/ec.ts",
            ts(f"const key = `{sec1}`;"),
            PRIVATE_KEY,
            sec1.splitlines()[1],
        ),
        Sample(
            "openssh-escaped-in-json",
            "f/keys/deploy.resource.json",
            json.dumps({"value": {"ssh_key": openssh}, "resource_type": "ssh"}),
            PRIVATE_KEY,
            openssh.splitlines()[1],
        ),
        Sample(
            "github-classic", "f/gh/classic.py", py(f'TOKEN = "{classic}"'), "GitHub Token", classic
        ),
        Sample(
            "github-classic-yaml-escaped",
            "f/gh/escaped.resource.yaml",
            f'resource_type: github\nvalue:\n  token: "{escaped}"\n',
            "GitHub Token",
            classic,
        ),
        Sample(
            "github-fine-grained",
            "f/gh/fine.ts",
            ts(f'const token = "{fine}";'),
            "GitHub Fine-Grained Token",
            fine,
        ),
        Sample(
            "aws-key-pair",
            "f/aws/upload.py",
            py(f'AWS_ACCESS_KEY_ID = "{key_id}"', f'aws_secret_access_key = "{secret_key}"'),
            "AWS Access Key",
            secret_key,
        ),
        Sample("slack", "f/chat/notify.ts", ts(f'const SLACK = "{slack}";'), "Slack Token", slack),
        Sample(
            "stripe",
            "f/pay/charge.py",
            py(f'stripe.api_key = "{stripe}"'),
            "Stripe Access Key",
            stripe,
        ),
        Sample(
            "openai",
            "f/ai/chat.py",
            py(f'client = OpenAI(api_key="{openai}")'),
            "OpenAI Token",
            openai,
        ),
        Sample(
            "jwt", "f/db/supabase.ts", ts(f'const serviceKey = "{token}";'), "JSON Web Token", token
        ),
        *yaml_shapes(),
    ]


def yaml_shapes() -> list[Sample]:
    """Secrets the scanner finds only once it has parsed the YAML: the screen must not skip them."""
    secret_key, ibm, artifactory = aws_secret(), _random(44), "AKC" + _random(20)
    return [
        Sample(
            "aws-secret-unquoted-in-yaml",
            "f/aws/creds.resource.yaml",
            f"resource_type: aws\nvalue:\n  aws_secret_access_key: {secret_key}\n",
            "AWS Access Key",
            secret_key,
        ),
        Sample(
            "keyword-value-on-the-next-line",
            "f/ibm/iam.resource.yaml",
            f"resource_type: ibm\nvalue:\n  ibm_cloud_api_key:\n    {ibm}\n",
            "IBM Cloud IAM Key",
            ibm,
        ),
        Sample(
            "artifactory-single-quoted",
            "f/jfrog/npm.resource.yaml",
            f"resource_type: jfrog\nvalue:\n  token: '{artifactory}'\n",
            "Artifactory Credentials",
            artifactory,
        ),
        Sample(
            "keyword-through-an-anchor",
            "f/ibm/shared.resource.yaml",
            f"defaults: &key {ibm}\nvalue:\n  ibm_api_key: *key\n",
            "IBM Cloud IAM Key",
            ibm,
        ),
    ]


PGP_REGEX = r"const armored = /(-----BEGIN PGP PRIVATE KEY BLOCK-----)([\s\S]*?)(-----END PGP PRIVATE KEY BLOCK-----)/;"

LOOKALIKES = [
    # Ten copies of a Git-sync script, in the wild: a regex, not a key.
    Sample(
        "pgp-regex", "f/git/sync_repo.ts", ts(PGP_REGEX, "const m = input.match(armored);"), None
    ),
    Sample(
        "replace-argument",
        "f/gcp/token.py",
        py(
            "def pem_body(key: str) -> str:",
            '    return key.replace("-----BEGIN PRIVATE KEY-----", "").replace(',
            '        "-----END PRIVATE KEY-----", "").replace("\\n", "")',
        ),
        None,
    ),
    Sample(
        "placeholder-resource",
        "f/gcp/sa.resource.yaml",
        "resource_type: gcp_service_account\nvalue:\n  client_email: bot@project.iam.gserviceaccount.com\n"
        '  private_key: "-----BEGIN PRIVATE KEY-----\\n...\\n-----END PRIVATE KEY-----"\n',
        None,
    ),
    Sample(
        "truncated-key-in-docs",
        "f/keys/readme.py",
        py(
            '"""Paste your key like this:',
            "-----BEGIN RSA PRIVATE KEY-----",
            "MIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gun",
            "-----END RSA PRIVATE KEY-----",
            '"""',
        ),
        None,
    ),
    Sample(
        "header-in-error-message",
        "f/keys/check.ts",
        ts(
            'if (!key.startsWith("-----BEGIN RSA PRIVATE KEY-----")) throw new Error("not a PEM key");'
        ),
        None,
    ),
    Sample(
        "local-postgres-changeme",
        "f/db/dev.py",
        py('DSN = "postgres://postgres:changeme@localhost:5432/app"'),
        None,
    ),
    Sample(
        "local-postgres-name-to-fill",
        "f/db/local.ts",
        ts('const url = "postgres://postgres:SECRET_PASSWORD@localhost:5432/windmill";'),
        None,
    ),
    Sample(
        "local-mysql-root",
        "f/db/mysql.py",
        py('URL = "mysql://root:root@127.0.0.1:3306/app"'),
        None,
    ),
    Sample(
        "local-redis",
        "f/db/cache.ts",
        ts('const redis = "redis://default:password@localhost:6379";'),
        None,
    ),
    Sample(
        "aws-documentation-pair",
        "f/aws/example.py",
        py(
            'AWS_ACCESS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"',
            'aws_secret_access_key = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"',
        ),
        None,
    ),
    Sample(
        "jwt-io-sample",
        "f/auth/decode.ts",
        ts(
            "// e.g. eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4g"
            "RG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
        ),
        None,
    ),
    Sample(
        "github-placeholder",
        "f/gh/template.py",
        py('TOKEN = "ghp_' + "x" * 36 + '"  # your token'),
        None,
    ),
    Sample(
        "certificate",
        "f/tls/ca.resource.yaml",
        "resource_type: tls\nvalue:\n  ca: |-\n    -----BEGIN CERTIFICATE-----\n"
        "    MIIBszCCAVmgAwIBAgIUQ\n    -----END CERTIFICATE-----\n",
        None,
    ),
]
