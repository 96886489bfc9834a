//! Token (JWT-shaped, HMAC-MD5 signed) and secret verification (stardust-runtime/docs/stardust-protocol.md §3).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use md5::{Digest, Md5};
use serde_json::{Value, json};

/// Uppercase hex MD5 of the UTF-8 bytes (`MD5u` in stardust-runtime/docs/stardust-protocol.md §3.2).
pub fn md5_upper(s: &str) -> String {
    let d = Md5::digest(s.as_bytes());
    d.iter().map(|b| format!("{b:02X}")).collect()
}

/// The salted secret form the .NET client sends: `$md5$<unixSec>$<MD5u(MD5u(secret)+unixSec)>`.
pub fn salted_secret(secret: &str, unix_sec: i64) -> String {
    let salt = unix_sec.to_string();
    format!("$md5${salt}${}", md5_upper(&(md5_upper(secret) + &salt)))
}

fn hmac_md5(key: &[u8], msg: &[u8]) -> [u8; 16] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..16].copy_from_slice(&Md5::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Md5::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let ih = inner.finalize();
    let mut outer = Md5::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(ih);
    outer.finalize().into()
}

/// Claims carried by a token issued by the fake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    /// App name.
    pub sub: String,
    /// ClientId.
    pub jti: String,
    /// Issued at, Unix seconds (server clock).
    pub iat: i64,
    /// Expiry, Unix seconds (server clock).
    pub exp: i64,
}

pub(crate) fn issue_token(key: &[u8], c: &TokenClaims) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload =
        json!({"iss": "FakeStardust", "sub": c.sub, "jti": c.jti, "iat": c.iat, "exp": c.exp});
    let payload = URL_SAFE_NO_PAD.encode(payload.to_string().as_bytes());
    let signing_input = format!("{header}.{payload}");
    let sig = URL_SAFE_NO_PAD.encode(hmac_md5(key, signing_input.as_bytes()));
    format!("{signing_input}.{sig}")
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not 3 base64url parts / payload not JSON.
    Format,
    /// Expired (exp ≤ now); carries sub.
    Expired(String),
    /// Signature does not verify (wrong key, tampered); carries sub.
    Signature(String),
}

/// Decode the payload of a JWT-shaped token without verifying it.
pub fn decode_token_payload(token: &str) -> Option<Value> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return None;
    }
    let bytes = URL_SAFE_NO_PAD
        .decode(parts[1].trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.is_object().then_some(v)
}

/// Validation order like NewLife JwtBuilder: format, expiry, signature.
pub(crate) fn verify_token(
    key: &[u8],
    token: &str,
    now_ms: i64,
) -> Result<TokenClaims, TokenError> {
    let parts: Vec<&str> = token.split('.').collect();
    if parts.len() != 3 {
        return Err(TokenError::Format);
    }
    let p = decode_token_payload(token).ok_or(TokenError::Format)?;
    let s = |k: &str| p.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |k: &str| p.get(k).and_then(Value::as_i64);
    let claims = TokenClaims {
        sub: s("sub"),
        jti: s("jti"),
        iat: n("iat").unwrap_or(0),
        exp: n("exp").ok_or(TokenError::Format)?,
    };
    if now_ms >= claims.exp.saturating_mul(1000) {
        return Err(TokenError::Expired(claims.sub));
    }
    let signing_input = format!("{}.{}", parts[0], parts[1]);
    let want = URL_SAFE_NO_PAD.encode(hmac_md5(key, signing_input.as_bytes()));
    if want != parts[2] {
        return Err(TokenError::Signature(claims.sub));
    }
    Ok(claims)
}

/// Which form of `Secret` a login used (stardust-runtime/docs/stardust-protocol.md §3.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretForm {
    /// No (or an empty) `Secret` in the request.
    Absent,
    /// Anything that is neither salted nor a 32-hex MD5: treated as plaintext.
    Plaintext,
    /// A 32-hex-digit string (a "1-part hash").
    Md5,
    /// `$md5$<salt>$<hash>`.
    Salted,
}

/// Result of the secret check for one login.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretCheck {
    /// Form of the secret as sent.
    pub form: SecretForm,
    /// Whether it verified (true as well when the app has no secret or is new).
    pub ok: bool,
    /// Human-readable detail ("salted ok", "salt too old: skew 900 s", ...).
    pub detail: String,
}

pub(crate) fn classify_secret(sent: Option<&str>) -> SecretForm {
    match sent {
        None | Some("") => SecretForm::Absent,
        Some(s) if s.starts_with("$md5$") => SecretForm::Salted,
        Some(s) if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) => SecretForm::Md5,
        Some(_) => SecretForm::Plaintext,
    }
}

/// Verify `sent` against the stored secret like RegistryService.Authorize + SaltPasswordProvider.
pub(crate) fn verify_secret(
    stored: Option<&str>,
    sent: Option<&str>,
    now_s: i64,
    salt_time: i64,
) -> SecretCheck {
    let form = classify_secret(sent);
    let stored = match stored {
        None | Some("") => {
            return SecretCheck {
                form,
                ok: true,
                detail: "app has no secret".into(),
            };
        }
        Some(s) => s,
    };
    let sent = match sent {
        None | Some("") => {
            return SecretCheck {
                form,
                ok: false,
                detail: "secret required but absent".into(),
            };
        }
        Some(s) => s,
    };
    if stored.eq_ignore_ascii_case(sent) {
        return SecretCheck {
            form: SecretForm::Plaintext,
            ok: true,
            detail: "plaintext match".into(),
        };
    }
    if let Some(rest) = sent.strip_prefix("$md5$") {
        let mut it = rest.splitn(2, '$');
        let (salt, hash) = (it.next().unwrap_or(""), it.next().unwrap_or(""));
        let Ok(ts) = salt.parse::<i64>() else {
            return SecretCheck {
                form,
                ok: false,
                detail: format!("salt {salt:?} is not a unix time"),
            };
        };
        let skew = now_s - ts;
        if skew.abs() > salt_time {
            return SecretCheck {
                form,
                ok: false,
                detail: format!("salt outside ±{salt_time} s of server clock (skew {skew} s)"),
            };
        }
        if hash == md5_upper(&(md5_upper(stored) + salt)) {
            return SecretCheck {
                form,
                ok: true,
                detail: "salted ok".into(),
            };
        }
        if hash == md5_upper(&(stored.to_string() + salt)) {
            return SecretCheck {
                form,
                ok: true,
                detail: "salted ok (MD5u(secret+salt) variant)".into(),
            };
        }
        return SecretCheck {
            form,
            ok: false,
            detail: "salted hash mismatch (hash must be uppercase)".into(),
        };
    }
    if md5_upper(stored).eq_ignore_ascii_case(sent) {
        return SecretCheck {
            form: SecretForm::Md5,
            ok: true,
            detail: "md5 match".into(),
        };
    }
    SecretCheck {
        form,
        ok: false,
        detail: "wrong secret".into(),
    }
}
