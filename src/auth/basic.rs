//! The `Basic` scheme (RFC 7617): reading a `Proxy-Authorization` value, and the
//! challenge a 407 carries.

use base64ct::{Base64, Encoding};

/// Longest credentials value read (`Basic ` and the base64 of `user:password`); a longer
/// one is refused as malformed without being decoded.
pub const MAX_VALUE_LEN: usize = 1024;

/// The user and password a `Basic` value carries.
#[derive(Debug, PartialEq, Eq)]
pub struct BasicCredentials {
    pub user: String,
    pub password: Vec<u8>,
}

/// Why a value is not usable `Basic` credentials (never the value itself: it is secret).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    NotBasic,
    TooLong,
    BadBase64,
    NoColon,
    BadUser,
}

/// Reads `Basic <base64(user:password)>`: the scheme in any case, one or more spaces,
/// standard base64 with padding. The user is UTF-8 without `:`; the password any bytes.
pub fn parse(value: &[u8]) -> Result<BasicCredentials, Malformed> {
    if value.len() > MAX_VALUE_LEN {
        return Err(Malformed::TooLong);
    }
    let value = value.trim_ascii();
    let (scheme, rest) = match value.iter().position(|b| *b == b' ') {
        Some(i) => (&value[..i], &value[i..]),
        None => (value, &b""[..]),
    };
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return Err(Malformed::NotBasic);
    }
    let token = rest.trim_ascii_start();
    let mut buf = [0u8; MAX_VALUE_LEN];
    // Constant-time decoding: the bytes are a secret.
    let decoded = Base64::decode(token, &mut buf).map_err(|_| Malformed::BadBase64)?;
    let colon = decoded.iter().position(|b| *b == b':').ok_or(Malformed::NoColon)?;
    let user = std::str::from_utf8(&decoded[..colon]).map_err(|_| Malformed::BadUser)?;
    if super::users::check_user_name(user).is_err() {
        return Err(Malformed::BadUser);
    }
    let credentials = BasicCredentials { user: user.to_string(), password: decoded[colon + 1..].to_vec() };
    buf.fill(0);
    Ok(credentials)
}

/// The `Proxy-Authenticate` field of a 407, with its line end.
pub fn challenge_field(realm: &str) -> String {
    format!("Proxy-Authenticate: Basic realm=\"{realm}\", charset=\"UTF-8\"\r\n")
}

/// Whether `realm` can go inside the challenge's quoted string as it is: printable ASCII
/// without `"` or `\`.
pub fn realm_is_valid(realm: &str) -> bool {
    !realm.is_empty()
        && realm.len() <= 128
        && realm.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(s: &str) -> Vec<u8> {
        format!("Basic {}", Base64::encode_string(s.as_bytes())).into_bytes()
    }

    #[test]
    fn reads_user_and_password() {
        let c = parse(&basic("alice:s3:cr et")).unwrap();
        assert_eq!(c, BasicCredentials { user: "alice".into(), password: b"s3:cr et".to_vec() });
        let c = parse(b"bAsIc   YWxpY2U6").unwrap();
        assert_eq!(c, BasicCredentials { user: "alice".into(), password: Vec::new() });
        let c = parse(&basic("j\u{f6}rg:pw")).unwrap();
        assert_eq!(c.user, "j\u{f6}rg");
    }

    #[test]
    fn refuses_what_is_not_basic_credentials() {
        assert_eq!(parse(b"Bearer abc"), Err(Malformed::NotBasic));
        assert_eq!(parse(b"Basicx YWxpY2U6"), Err(Malformed::NotBasic));
        assert_eq!(parse(b""), Err(Malformed::NotBasic));
        assert_eq!(parse(b"Basic"), Err(Malformed::NoColon), "nothing decoded, so no colon");
        assert_eq!(parse(b"Basic !!!!"), Err(Malformed::BadBase64));
        assert_eq!(parse(b"Basic YWxpY2U"), Err(Malformed::BadBase64), "missing padding");
        assert_eq!(parse(&basic("alice")), Err(Malformed::NoColon));
        assert_eq!(parse(&basic(":pw")), Err(Malformed::BadUser));
        assert_eq!(parse(&basic("a b:pw")), Err(Malformed::BadUser));
        assert_eq!(parse(b"Basic /w==").map(|_| ()), Err(Malformed::NoColon));
        let long = basic(&format!("alice:{}", "x".repeat(MAX_VALUE_LEN)));
        assert_eq!(parse(&long), Err(Malformed::TooLong));
    }

    #[test]
    fn the_challenge_names_the_realm() {
        assert_eq!(challenge_field("sluice"), "Proxy-Authenticate: Basic realm=\"sluice\", charset=\"UTF-8\"\r\n");
        assert!(realm_is_valid("Office proxy (2nd floor)"));
        for bad in ["", "a\"b", "a\\b", "caf\u{e9}", "a\r\nX: y"] {
            assert!(!realm_is_valid(bad), "{bad:?}");
        }
    }
}
