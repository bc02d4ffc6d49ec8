#!/usr/bin/python3
"""Verifies one compact JWS against a JWK set with an independent Python JOSE
implementation, for signet's interoperability test (tests/interop).

    verify_with_python.py jwcrypto   --jwks F --token F --alg A --issuer I [--audience X] [--any-key]
    verify_with_python.py pyjwt      --jwks F --token F --alg A --issuer I [--audience X] [--any-key]
    verify_with_python.py thumbprint --jwks F

jwcrypto: JWKSet.from_json + JWT(jwt=..., key=keyset, algs=[alg],
  check_claims={iss, exp, iat[, aud]}); the key is the set's key named by the
  token's "kid".
pyjwt: PyJWKSet.from_json, the key whose kid is the token's, then
  jwt.decode(algorithms=[alg], issuer=..., audience=...) with exp, iat and iss
  required and exp verified.
--any-key: ignore the token's kid and try every key of the set (a verifier
  that does not bind kid); verification succeeds if any key verifies. A
  refusal then says the signature itself fails under every key, not merely
  that the kid is unknown.
thumbprint: prints {"<kid>": "<RFC 7638 SHA-256 thumbprint>", ...} of every
  key of the set, computed by jwcrypto.

Exit status: 0 verified (prints "OK ..."), 1 refused (prints "REFUSED: <why>"),
2 usage error, 3 the library is missing or broken (so a broken environment is
never mistaken for a refusal).

Run with /usr/bin/python3: Debian's python3-jwcrypto and python3-jwt are
installed for it, not for another interpreter that may come first on PATH.
"""

import argparse
import json
import sys


def refuse(library, why):
    print(f"REFUSED by {library}: {why}")
    sys.exit(1)


def read(path):
    with open(path, "r", encoding="utf-8") as f:
        return f.read().strip()


def load_jwcrypto():
    try:
        from jwcrypto import jwk, jwt  # noqa: F401
    except Exception as e:  # pylint: disable=broad-except
        print(f"cannot import jwcrypto ({sys.executable}): {e!r}")
        sys.exit(3)
    return jwk, jwt


def load_pyjwt():
    try:
        import jwt  # PyJWT
        jwt.PyJWKSet  # pylint: disable=pointless-statement
    except Exception as e:  # pylint: disable=broad-except
        print(f"cannot import PyJWT ({sys.executable}): {e!r}")
        sys.exit(3)
    return jwt


def verify_jwcrypto(args):
    jwk, jwt = load_jwcrypto()
    token = read(args.token)
    try:
        keyset = jwk.JWKSet.from_json(read(args.jwks))
    except Exception as e:  # pylint: disable=broad-except
        refuse("jwcrypto", f"JWK set does not parse: {e!r}")
    check_claims = {"iss": args.issuer, "exp": None, "iat": None}
    if args.audience:
        check_claims["aud"] = args.audience
    keys = list(keyset) if args.any_key else [keyset]
    errors = []
    for key in keys:
        try:
            verified = jwt.JWT(jwt=token, key=key, algs=[args.alg],
                               check_claims=check_claims)
        except Exception as e:  # pylint: disable=broad-except
            errors.append(f"{type(e).__name__}: {e}")
            continue
        header = json.loads(verified.header)
        claims = json.loads(verified.claims)
        if header.get("alg") != args.alg:
            refuse("jwcrypto", f"header alg {header.get('alg')!r}")
        print(f"OK jwcrypto alg={header['alg']} kid={header.get('kid')} "
              f"sub={claims.get('sub')}")
        return
    refuse("jwcrypto", "; ".join(errors) if errors else "empty key set")


def verify_pyjwt(args):
    jwt = load_pyjwt()
    token = read(args.token)
    try:
        keyset = jwt.PyJWKSet.from_json(read(args.jwks))
        header = jwt.get_unverified_header(token)
    except Exception as e:  # pylint: disable=broad-except
        refuse("PyJWT", f"{type(e).__name__}: {e}")
    if args.any_key:
        candidates = list(keyset.keys)
    else:
        candidates = [k for k in keyset.keys if k.key_id == header.get("kid")]
        if not candidates:
            refuse("PyJWT", f"no key with kid {header.get('kid')!r} in the set "
                   f"(kids: {[k.key_id for k in keyset.keys]})")
    options = {"require": ["exp", "iat", "iss"], "verify_exp": True,
               "verify_iss": True, "verify_signature": True}
    errors = []
    for key in candidates:
        try:
            claims = jwt.decode(token, key.key, algorithms=[args.alg],
                                issuer=args.issuer, audience=args.audience,
                                options=options)
        except Exception as e:  # pylint: disable=broad-except
            errors.append(f"{type(e).__name__}: {e}")
            continue
        print(f"OK PyJWT alg={header.get('alg')} kid={header.get('kid')} "
              f"sub={claims.get('sub')}")
        return
    refuse("PyJWT", "; ".join(errors))


def thumbprints(args):
    jwk, _ = load_jwcrypto()
    keyset = jwk.JWKSet.from_json(read(args.jwks))
    print(json.dumps({k.get("kid"): k.thumbprint() for k in keyset},
                     sort_keys=True))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("library", choices=["jwcrypto", "pyjwt", "thumbprint"])
    parser.add_argument("--jwks", required=True, help="file with a JWK set")
    parser.add_argument("--token", help="file with one compact JWS")
    parser.add_argument("--alg", help="the one algorithm accepted")
    parser.add_argument("--issuer", help="the expected iss")
    parser.add_argument("--audience", help="the expected aud (if any)")
    parser.add_argument("--any-key", action="store_true",
                        help="try every key of the set, ignoring kid")
    args = parser.parse_args()
    if args.library == "thumbprint":
        thumbprints(args)
        return
    if not (args.token and args.alg and args.issuer):
        parser.error("--token, --alg and --issuer are required")
    if args.library == "jwcrypto":
        verify_jwcrypto(args)
    else:
        verify_pyjwt(args)


if __name__ == "__main__":
    main()
