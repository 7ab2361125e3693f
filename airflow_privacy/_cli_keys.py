"""``airflow-privacy keys``: generate and rotate key rings, inspect and decrypt encrypted files.

``generate``, ``rotate``, ``inspect``, ``decrypt`` and ``rewrap``; :func:`_add_keys` registers
the group with the parser of :mod:`airflow_privacy.cli`.
"""

from __future__ import annotations

import argparse
import os
import stat
import sys

from airflow_privacy._cli_output import _print


def _read_ring(path: str | None):
    """The key ring JSON in ``path`` (``-``: stdin): a symmetric ring, or a holder's private
    or public ring (told apart by its ``kind``)."""
    from airflow_privacy.core.crypto import load_key_material

    if path in (None, "-"):
        return load_key_material(sys.stdin.read())
    with open(path) as fh:
        return load_key_material(fh.read())


def _ring_of(args):
    """``--ring FILE`` or, without it, the ``privacy_keys`` connection ``--conn-id``."""
    if args.ring is not None:
        return _read_ring(args.ring)
    from airflow_privacy.hooks.keys import PrivacyKeyHook

    return PrivacyKeyHook(args.conn_id).get_key_material()


def _write_secret(text: str, output: str | None) -> None:
    """A key ring to ``output`` (atomically, mode 0600) or to stdout.

    A shell redirect (``> ring.json``) creates the file with the umask's mode, usually 0644
    -- readable by every local user -- so printing to a regular file warns.
    """
    if output is not None:
        from airflow_privacy.core.io import open_atomic

        with open_atomic(output, mode=0o600) as fh:
            fh.write(text.encode() + b"\n")
        return
    mode = os.fstat(sys.stdout.fileno()).st_mode
    if stat.S_ISREG(mode) and mode & 0o077:
        print(f"warning: a secret key ring is going to a file readable by others (mode {stat.S_IMODE(mode):o}); "
              "use --output PATH to write it with mode 0600", file=sys.stderr)
    print(text)


def _keys_generate(args) -> int:
    from airflow_privacy.core.crypto import KeyRing

    if args.recipient or args.public:
        return _keys_generate_recipient(args)
    _write_secret(KeyRing.generate().to_json(), args.output)
    return 0


def _keys_generate_recipient(args) -> int:
    """``--recipient``: a data holder's key pair. The private ring (secret) goes to
    ``--output`` or stdout, for the holder's privacy_keys connection only; the public ring
    (key id, suite, fingerprint) to ``--public``, for every producer."""
    from airflow_privacy.core.crypto import PrivateKeyRing
    from airflow_privacy.core.errors import InvalidParameterError

    if not (args.recipient and args.public):
        raise InvalidParameterError("--public", args.public, "give both --recipient and --public PATH")
    ring = PrivateKeyRing.generate(suite=args.suite, key_id=args.key_id)
    _write_secret(ring.to_json(), args.output)
    _write_public(ring, args.public)
    return 0


def _write_public(ring, path: str) -> None:
    """The public half of a holder's private ring to ``path`` (atomically; not secret), and
    its primary key's id and fingerprint on stderr, to compare out of band."""
    from airflow_privacy.core.io import open_atomic

    public = ring.public_ring()
    with open_atomic(path) as fh:
        fh.write(public.to_json().encode() + b"\n")
    key = public.primary
    print(f"public ring -> {path}: key {key.key_id} ({key.suite.name}), {key.fingerprint}", file=sys.stderr)


def _keys_rotate(args) -> int:
    """A symmetric ring gets a new primary KEK; a holder's private ring a new key pair as
    primary, whose public ring goes to ``--public`` (required: producers keep wrapping to
    the old key until they get it). Old keys stay, so existing files still open. Every check
    runs before anything is written."""
    from airflow_privacy.core.crypto import KeyRing, PrivateKeyRing
    from airflow_privacy.core.errors import InvalidParameterError

    ring = _read_ring(args.ring)
    if isinstance(ring, KeyRing):
        if args.public is not None:
            raise InvalidParameterError("--public", args.public, "only a holder's private ring has a public "
                                        "ring to republish; this is a symmetric key ring")
        _write_secret(ring.rotate(key_id=args.key_id).to_json(), args.output)
        return 0
    if not isinstance(ring, PrivateKeyRing):
        raise InvalidParameterError("ring", args.ring, "this is a public ring: rotate the holder's private "
                                    "ring, then hand its new public ring (--public) to the producers")
    if ring.role != "encrypt":
        raise InvalidParameterError("ring", args.ring, "an ed25519 signing ring's key id is its producer's "
                                    "id: generate the producer a new signing key instead")
    if args.public is None:
        raise InvalidParameterError("--public", None, "rotating a holder's key pair needs --public PATH for "
                                    "the new public ring (producers keep wrapping to the old key until they get it)")
    rotated = ring.rotate(key_id=args.key_id)
    _write_secret(rotated.to_json(), args.output)
    _write_public(rotated, args.public)
    return 0


def _keys_inspect(args) -> int:
    from airflow_privacy.core.crypto import inspect_header

    _print(inspect_header(args.file), args.json)
    return 0


def _keys_decrypt(args) -> int:
    from airflow_privacy.core.crypto import decrypt_file

    # a symmetric ring, or the holder's private ring for files encrypted to it; a public ring
    # fails with IntegrityError before anything is written
    ring = _ring_of(args)
    # The plaintext file is created 0600, whatever the shell's umask: this process writes
    # nothing else.
    os.umask(0o077)
    stats = decrypt_file(args.file, args.output, ring, args.associated_data)
    _print({"output": args.output, **stats}, args.json)
    return 0


def _keys_rewrap(args) -> int:
    """Re-wrap each file's data key in place (bodies untouched); already done: unchanged."""
    from airflow_privacy.core.crypto import PublicKeyRing, rewrap
    from airflow_privacy.core.errors import InvalidParameterError

    ring = _ring_of(args)
    recipients = None
    if args.recipient:
        recipients = [_read_ring(path) for path in args.recipient]
        for path, public in zip(args.recipient, recipients, strict=True):
            if not isinstance(public, PublicKeyRing):
                raise InvalidParameterError("--recipient", path, "expected a public ring file (keys generate "
                                            "--recipient --public PATH)")
    rows = [{"file": path, **rewrap(path, ring, recipient=recipients).as_dict()} for path in args.file]
    _print(rows, args.json)
    return 0


_OUTPUT_HELP = ("write the key ring to PATH, atomically and with mode 0600 (a shell redirect "
                "would leave it readable by others, mode 0644 under the usual umask)")


def _add_keys(sub) -> None:
    keys = sub.add_parser("keys", help="generate and rotate key rings, inspect and decrypt encrypted files")
    ksub = keys.add_subparsers(dest="command", metavar="ACTION", required=True)
    gen = ksub.add_parser("generate", help="print a new key ring JSON (paste it into a privacy_keys connection's password)")
    gen.add_argument("--output", metavar="PATH", help=_OUTPUT_HELP)
    gen.add_argument("--recipient", action="store_true", help="a data holder's key pair: the private ring as "
                     "above (the holder's connection only), the public ring to --public (for producers)")
    gen.add_argument("--public", metavar="PATH", help="with --recipient: where to write the public ring")
    gen.add_argument("--suite", default="hpke-x25519-sha256-aes256gcm",
                     choices=["hpke-x25519-sha256-aes256gcm", "rsa-oaep-3072-sha256"], help="with --recipient")
    gen.add_argument("--key-id", help="with --recipient: the key's id (default: 8 random hex digits)")
    gen.set_defaults(func=_keys_generate)
    rot = ksub.add_parser("rotate", help="print the ring with a new primary key (a holder's private ring: a new "
                          "key pair, its public ring to --public); old keys stay for decryption")
    rot.add_argument("ring", nargs="?", default="-", help="key ring JSON file (default: stdin)")
    rot.add_argument("--output", metavar="PATH", help=_OUTPUT_HELP)
    rot.add_argument("--public", metavar="PATH", help="a holder's private ring: where to write the new public "
                     "ring for the producers (required for such a ring)")
    rot.add_argument("--key-id", help="the new key's id (default: 8 random hex digits)")
    rot.set_defaults(func=_keys_rotate)
    ins = ksub.add_parser("inspect", help="header of an encrypted file (no secrets)")
    ins.add_argument("file")
    ins.add_argument("--json", action="store_true")
    ins.set_defaults(func=_keys_inspect)
    ring_source = argparse.ArgumentParser(add_help=False)
    ring_source.add_argument("--ring", metavar="FILE", help="key ring JSON file, - for stdin: a symmetric ring or, "
                             "for files encrypted to a data holder, the holder's private ring (default: the "
                             "privacy_keys connection)")
    ring_source.add_argument("--conn-id", default="privacy_keys_default", help="privacy_keys connection id")
    ring_source.add_argument("--json", action="store_true", help="JSON output")
    dec = ksub.add_parser("decrypt", parents=[ring_source], help="decrypt an encrypted file to PATH (mode 0600, "
                          "published only once every segment authenticated)")
    dec.add_argument("file", help="encrypted file (path or URI)")
    dec.add_argument("--output", metavar="PATH", required=True, help="where the plaintext goes (path or URI)")
    dec.add_argument("--associated-data", help="the associated data given at encryption")
    dec.set_defaults(func=_keys_decrypt)
    rew = ksub.add_parser("rewrap", parents=[ring_source], help="after a rotation: re-wrap each file's data key "
                          "under the ring's new primary, in place; the body is not decrypted")
    rew.add_argument("file", nargs="+", help="encrypted files (paths or URIs)")
    rew.add_argument("--recipient", metavar="FILE", action="append", help="files encrypted to a data holder: wrap "
                     "to exactly these public rings' primaries instead (repeat for several, e.g. the holder and "
                     "an escrow key)")
    rew.set_defaults(func=_keys_rewrap)
