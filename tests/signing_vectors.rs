//! Asymmetric (`v1a`, Ed25519) signatures through the public API: published
//! vectors, key formats, signing, and verifying headers that carry `v1` and
//! `v1a` entries side by side.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyhook::Error;
use keyhook::signing::{
    self, Ed25519PublicKey, Ed25519SecretKey, MAX_ENTRY_LEN, Signer, SigningSecret, Verifier,
    VerifyError,
};

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let bytes: Vec<u8> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect();
    bytes.try_into().unwrap()
}

fn at(ts: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(ts as u64)
}

/// RFC 8032 section 7.1, TESTs 1 to 3: seed and public key. (Their
/// signatures are over raw messages, which `Signer` never signs; the
/// signing path is checked against them in `src/signing/ed25519.rs`.)
const RFC8032_KEYS: [(&str, &str); 3] = [
    (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
    ),
    (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
    ),
    (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
    ),
];

#[test]
fn rfc8032_key_pairs() {
    for (seed, public) in RFC8032_KEYS {
        let seed: [u8; 32] = unhex(seed);
        let public: [u8; 32] = unhex(public);
        let key = Ed25519SecretKey::from_seed(&seed);
        assert_eq!(key.seed(), &seed);
        assert_eq!(key.public_key().as_bytes(), &public);
        assert_eq!(
            Ed25519PublicKey::from_bytes(&public).unwrap(),
            key.public_key()
        );

        // Text forms round-trip.
        let text = key.expose();
        assert!(text.starts_with("whsk_"));
        assert_eq!(Ed25519SecretKey::parse(&text).unwrap(), key);
        let public_text = key.public_key().to_string();
        assert!(public_text.starts_with("whpk_"));
        assert_eq!(
            public_text.parse::<Ed25519PublicKey>().unwrap(),
            key.public_key()
        );
    }
}

/// Svix's test key pair (its server's key format tests), the key the
/// Standard Webhooks spec's example `v1a` entry was made with.
const SVIX_SECRET_KEY: &str =
    "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg==";
const SVIX_PUBLIC_KEY: &str = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4=";

/// The Standard Webhooks reference libraries' `v1` test vector (secret, id,
/// timestamp, body and signature)...
const V1_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const MSG_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
const TS: i64 = 1614265330;
const BODY: &[u8] = br#"{"test": 2432232314}"#;
const V1_ENTRY: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

/// ...and the `v1a` entry of the spec's example `webhook-signature` header,
/// which is Svix's key over that same message (OpenSSL 3.0's Ed25519 gives
/// the same bytes).
const V1A_ENTRY: &str =
    "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg==";

#[test]
fn standard_webhooks_vector_signs() {
    let key = Ed25519SecretKey::parse(SVIX_SECRET_KEY).unwrap();
    assert_eq!(key.expose(), SVIX_SECRET_KEY);
    assert_eq!(key.public_key().to_string(), SVIX_PUBLIC_KEY);

    let signer = Signer::ed25519(&key);
    assert_eq!(signer.version(), "v1a");
    let sig = signer.sign(MSG_ID, TS, BODY);
    assert_eq!(sig.version(), "v1a");
    assert_eq!(sig.as_bytes().len(), 64);
    assert_eq!(sig.to_string(), V1A_ENTRY);
    assert_eq!(sig.to_header_value(), V1A_ENTRY);

    let mut buf = [0u8; MAX_ENTRY_LEN];
    assert_eq!(
        signer.sign_into(MSG_ID, TS, BODY, &mut buf),
        V1A_ENTRY.as_bytes()
    );
    assert_eq!(
        signing::sign(std::slice::from_ref(&signer), MSG_ID, TS, BODY),
        V1A_ENTRY
    );

    // Rotation from v1 to v1a: both entries, in the signers' order.
    let both = [
        Signer::new(&SigningSecret::parse(V1_SECRET).unwrap()),
        signer,
    ];
    let header = signing::sign(&both, MSG_ID, TS, BODY);
    assert_eq!(header, format!("{V1_ENTRY} {V1A_ENTRY}"));
    let mut reused = String::from("left over");
    signing::sign_into(&both, MSG_ID, TS, BODY, &mut reused);
    assert_eq!(reused, header);
}

fn verifier_pk() -> Verifier {
    Verifier::new().with_public_key(&Ed25519PublicKey::parse(SVIX_PUBLIC_KEY).unwrap())
}

fn verifier_secret() -> Verifier {
    Verifier::new().with_secret(&SigningSecret::parse(V1_SECRET).unwrap())
}

fn check(verifier: &Verifier, header: &str, body: &[u8]) -> Result<(), VerifyError> {
    verifier.verify(
        Some(MSG_ID),
        Some(&TS.to_string()),
        Some(header),
        body,
        at(TS),
    )
}

#[test]
fn header_with_both_entries_verifies_with_either_key_kind() {
    for header in [
        format!("{V1_ENTRY} {V1A_ENTRY}"),
        format!("{V1A_ENTRY} {V1_ENTRY}"),
    ] {
        assert_eq!(check(&verifier_pk(), &header, BODY), Ok(()));
        assert_eq!(check(&verifier_secret(), &header, BODY), Ok(()));
        let both = verifier_pk().with_secret(&SigningSecret::parse(V1_SECRET).unwrap());
        assert_eq!(check(&both, &header, BODY), Ok(()));
        // The free function reads only v1 entries.
        let r = signing::verify(
            Some(MSG_ID),
            Some(&TS.to_string()),
            Some(&header),
            BODY,
            &[SigningSecret::parse(V1_SECRET).unwrap()],
            at(TS),
            signing::DEFAULT_TOLERANCE,
        );
        assert_eq!(r, Ok(()));
    }
    assert_eq!(check(&verifier_pk(), V1A_ENTRY, BODY), Ok(()));
}

#[test]
fn tampered_payload_id_or_timestamp_fails() {
    let header = format!("{V1_ENTRY} {V1A_ENTRY}");
    for verifier in [verifier_pk(), verifier_secret()] {
        assert_eq!(
            check(&verifier, &header, br#"{"test": 2432232315}"#),
            Err(VerifyError::NoMatchingSignature)
        );
        let r = verifier.verify(
            Some("msg_other"),
            Some(&TS.to_string()),
            Some(&header),
            BODY,
            at(TS),
        );
        assert_eq!(r, Err(VerifyError::NoMatchingSignature));
        let r = verifier.verify(
            Some(MSG_ID),
            Some(&(TS + 1).to_string()),
            Some(&header),
            BODY,
            at(TS),
        );
        assert_eq!(r, Err(VerifyError::NoMatchingSignature));
    }
    // A flipped bit in the signature.
    let mut bad = V1A_ENTRY.to_owned();
    bad.replace_range(4..5, "i");
    assert_eq!(
        check(&verifier_pk(), &bad, BODY),
        Err(VerifyError::NoMatchingSignature)
    );
}

#[test]
fn wrong_key_fails() {
    let other = Ed25519SecretKey::generate().unwrap();
    let verifier = Verifier::new().with_public_key(&other.public_key());
    assert_eq!(
        check(&verifier, V1A_ENTRY, BODY),
        Err(VerifyError::NoMatchingSignature)
    );
    // A v1 MAC presented as v1a, and v1a bytes of the wrong length, never match.
    let header = format!("v1a,{} v1a,AAAA v1a,", &V1_ENTRY[3..]);
    assert_eq!(
        check(&verifier_pk(), &header, BODY),
        Err(VerifyError::NoMatchingSignature)
    );
    // A key ring: the second key matches.
    let ring = Verifier::new()
        .with_public_key(&other.public_key())
        .with_public_key(&Ed25519PublicKey::parse(SVIX_PUBLIC_KEY).unwrap());
    assert_eq!(check(&ring, V1A_ENTRY, BODY), Ok(()));
}

#[test]
fn only_the_first_v1a_entries_are_checked() {
    let other = Ed25519SecretKey::generate().unwrap();
    let forged = Signer::ed25519(&other).sign(MSG_ID, TS, BODY).to_string();
    let stuffed = |n: usize| {
        let mut header = vec![forged.as_str(); n];
        header.push(V1A_ENTRY);
        header.join(" ")
    };
    let max = signing::MAX_V1A_ENTRIES;
    assert_eq!(check(&verifier_pk(), &stuffed(max - 1), BODY), Ok(()));
    assert_eq!(
        check(&verifier_pk(), &stuffed(max), BODY),
        Err(VerifyError::NoMatchingSignature)
    );
    // Malformed entries do not count.
    let header = format!("{} {V1A_ENTRY}", vec!["v1a,AAAA"; 20].join(" "));
    assert_eq!(check(&verifier_pk(), &header, BODY), Ok(()));
}

#[test]
fn missing_entry_kinds_are_named() {
    let err = |reason| {
        Err(VerifyError::InvalidHeader {
            header: signing::HEADER_SIGNATURE,
            reason,
        })
    };
    assert_eq!(
        check(&verifier_pk(), V1_ENTRY, BODY),
        err("no v1a signature")
    );
    assert_eq!(
        check(&verifier_secret(), V1A_ENTRY, BODY),
        err("no v1 signature")
    );
    let both = verifier_pk().with_secret(&SigningSecret::parse(V1_SECRET).unwrap());
    assert_eq!(check(&both, "v2,abc", BODY), err("no v1 or v1a signature"));
    assert_eq!(
        check(&Verifier::new(), V1A_ENTRY, BODY),
        Err(VerifyError::NoSecrets)
    );
}

#[test]
fn verifier_tolerance() {
    let verifier = verifier_pk();
    let run = |v: &Verifier, now| {
        v.verify(
            Some(MSG_ID),
            Some(&TS.to_string()),
            Some(V1A_ENTRY),
            BODY,
            now,
        )
    };
    assert_eq!(run(&verifier, at(TS + 300)), Ok(()));
    assert_eq!(
        run(&verifier, at(TS + 301)),
        Err(VerifyError::TimestampTooOld)
    );
    assert_eq!(
        run(&verifier, at(TS - 301)),
        Err(VerifyError::TimestampTooNew)
    );
    let strict = verifier.clone().tolerance(Duration::from_secs(10));
    assert_eq!(run(&strict, at(TS + 10)), Ok(()));
    assert_eq!(run(&strict, at(TS + 11)), Err(VerifyError::TimestampTooOld));
    // With the system clock, a 2021 message is far too old.
    let get = |name: &str| match name {
        signing::HEADER_ID => Some(MSG_ID),
        signing::HEADER_TIMESTAMP => Some("1614265330"),
        signing::HEADER_SIGNATURE => Some(V1A_ENTRY),
        _ => None,
    };
    assert_eq!(
        verifier.verify_headers(get, BODY),
        Err(VerifyError::TimestampTooOld)
    );
}

#[test]
fn round_trips_with_generated_keys() {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let secret = SigningSecret::generate().unwrap();
    for _ in 0..20 {
        let key = Ed25519SecretKey::generate().unwrap();
        assert_eq!(Ed25519SecretKey::parse(&key.expose()).unwrap(), key);
        let public: Ed25519PublicKey = key.public_key().to_string().parse().unwrap();
        let signers = [Signer::new(&secret), Signer::from(&key)];
        for body in [&b""[..], b"{}", &[0xA5; 3000][..]] {
            let header = signing::sign(&signers, "msg_rt", now, body);
            let ts = now.to_string();
            let get = |name: &str| match name {
                signing::HEADER_ID => Some("msg_rt"),
                signing::HEADER_TIMESTAMP => Some(ts.as_str()),
                signing::HEADER_SIGNATURE => Some(header.as_str()),
                _ => None,
            };
            let by_public = Verifier::new().with_public_key(&public);
            assert_eq!(by_public.verify_headers(get, body), Ok(()));
            let by_secret = Verifier::new().with_secret(&secret);
            assert_eq!(by_secret.verify_headers(get, body), Ok(()));
        }
    }
    let a = Ed25519SecretKey::generate().unwrap();
    let b = Ed25519SecretKey::generate().unwrap();
    assert_ne!(a, b);
    assert_ne!(a.public_key(), b.public_key());
}

#[test]
fn sign_into_reuses_the_string() {
    let key = Ed25519SecretKey::generate().unwrap();
    let signers = [
        Signer::new(&SigningSecret::generate().unwrap()),
        Signer::ed25519(&key),
    ];
    let mut out = String::new();
    signing::sign_into(&signers, "msg_1", 1, b"{}", &mut out);
    assert_eq!(out.len(), 47 + 1 + 92);
    let (ptr, cap) = (out.as_ptr(), out.capacity());
    for ts in 2..50 {
        signing::sign_into(&signers, "msg_1", ts, b"{}", &mut out);
        assert_eq!(out, signing::sign(&signers, "msg_1", ts, b"{}"));
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap));
    }
    signing::sign_into(&[], "msg_1", 1, b"{}", &mut out);
    assert_eq!(out, "");
}

fn invalid_field(err: &Error) -> &'static str {
    match err {
        Error::InvalidInput { field, .. } => field,
        other => panic!("not InvalidInput: {other:?}"),
    }
}

#[test]
fn malformed_secret_keys_are_named_and_not_echoed() {
    let svix_b64 = &SVIX_SECRET_KEY["whsk_".len()..];
    let cases: Vec<(String, &str)> = vec![
        ("".to_owned(), "is empty"),
        ("whsk_".to_owned(), "is empty"),
        ("whsk_not*base64!".to_owned(), "is not valid base64"),
        (format!("whsk_{}", &svix_b64[..60]), "bytes"),
        (format!("whsk_{svix_b64}{svix_b64}"), "too long"),
        (SVIX_PUBLIC_KEY.to_owned(), "is a public key (whpk_)"),
        (V1_SECRET.to_owned(), "is an HMAC secret (whsec_)"),
        // Svix's own "bad" key: the public half altered.
        (
            "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlaaaaaaaaaaAJ6p9lMicMFs6Kvg=="
                .to_owned(),
            "does not belong to its seed",
        ),
    ];
    for (input, reason_part) in cases {
        let err = Ed25519SecretKey::parse(&input).unwrap_err();
        assert_eq!(invalid_field(&err), "secret_key", "{input:?}");
        let shown = format!("{err} {err:?}");
        assert!(shown.contains(reason_part), "{input:?}: {shown}");
        let body = input.trim_start_matches("whsk_");
        if body.len() > 8 {
            assert!(!shown.contains(&body[..8]), "{input:?} echoed: {shown}");
        }
    }
    // A bare seed, without prefix or padding, is read too.
    let key = Ed25519SecretKey::parse(SVIX_SECRET_KEY).unwrap();
    let seed_only = base64_std(key.seed());
    let from_seed = Ed25519SecretKey::parse(seed_only.trim_end_matches('=')).unwrap();
    assert_eq!(from_seed, key);
    assert_eq!(
        Ed25519SecretKey::parse(&format!("  {}\n", &SVIX_SECRET_KEY[5..])).unwrap(),
        key
    );
}

#[test]
fn malformed_public_keys_are_named() {
    let cases: Vec<(String, &str)> = vec![
        ("".to_owned(), "is empty"),
        ("whpk_%%%".to_owned(), "is not valid base64"),
        (format!("whpk_{}", base64_std(&[7u8; 31])), "is 31 bytes"),
        (SVIX_SECRET_KEY.to_owned(), "is a secret key (whsk_)"),
        (V1_SECRET.to_owned(), "is an HMAC secret (whsec_)"),
    ];
    for (input, reason_part) in cases {
        let err = Ed25519PublicKey::parse(&input).unwrap_err();
        assert_eq!(invalid_field(&err), "public_key", "{input:?}");
        assert!(err.to_string().contains(reason_part), "{input:?}: {err}");
    }
    // The identity point has small order: a weak key.
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let err = Ed25519PublicKey::from_bytes(&identity).unwrap_err();
    assert!(err.to_string().contains("weak"), "{err}");
    let err = Ed25519PublicKey::parse(&format!("whpk_{}", base64_std(&identity))).unwrap_err();
    assert!(err.to_string().contains("weak"), "{err}");
    // About half of all y coordinates are on no point of the curve.
    let not_points = (2u8..60)
        .filter(|&y| {
            let mut bytes = [0u8; 32];
            bytes[0] = y;
            Ed25519PublicKey::from_bytes(&bytes)
                .is_err_and(|e| e.to_string().contains("not an Ed25519 curve point"))
        })
        .count();
    assert!(not_points > 0);
    // Without prefix or padding.
    assert_eq!(
        Ed25519PublicKey::parse(SVIX_PUBLIC_KEY[5..].trim_end_matches('=')).unwrap(),
        Ed25519PublicKey::parse(SVIX_PUBLIC_KEY).unwrap()
    );
}

#[test]
fn secrets_are_redacted() {
    let key = Ed25519SecretKey::parse(SVIX_SECRET_KEY).unwrap();
    let shown = format!(
        "{key:?} {:?} {:?}",
        Signer::ed25519(&key),
        verifier_pk().with_secret(&SigningSecret::parse(V1_SECRET).unwrap())
    );
    let secret_b64 = &SVIX_SECRET_KEY[5..];
    assert!(!shown.contains(&secret_b64[..12]), "{shown}");
    assert!(!shown.contains(&V1_SECRET[6..14]), "{shown}");
    // The public key is not secret and helps tell keys apart.
    assert!(shown.contains(SVIX_PUBLIC_KEY), "{shown}");
    assert_eq!(format!("{:?}", Signer::ed25519(&key)), "Signer(v1a, ..)");
}

#[test]
fn handles_are_send_and_sync() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Signer>();
    check::<Verifier>();
    check::<Ed25519SecretKey>();
    check::<Ed25519PublicKey>();
}

fn base64_std(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
