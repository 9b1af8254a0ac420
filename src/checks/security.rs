//! The checks of what protects users: the token signing secret, TLS, rate
//! limits and who may register.

use secrecy::ExposeSecret;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::report::Check;
use crate::config::{Config, TlsConfig};

/// Short, example or (on a public bind) missing secrets are refused when
/// the file loads; what is left is whether one is set at all.
pub fn jwt_secret(config: &Config) -> Check {
    let secret = config.auth.jwt_secret.expose_secret();
    if secret.is_empty() {
        return Check::warn(
            "jwt_secret",
            "not set: a random one per start logs everyone out at restart; set \
             BOTHOST_JWT_SECRET to 32+ random bytes (`openssl rand -base64 48`)",
        );
    }
    Check::pass("jwt_secret", format!("set ({} bytes)", secret.len()))
}

pub fn tls(config: &Config, now: chrono::DateTime<chrono::Utc>) -> Check {
    match &config.server.tls {
        None if config.public_bind() => Check::warn(
            "tls",
            format!(
                "plain HTTP on a public address ({}): passwords and chats cross the network \
                 readable; set server.tls, or bind to loopback behind a TLS proxy",
                config.server.bind
            ),
        ),
        None => Check::pass(
            "tls",
            "plain HTTP on loopback (a local proxy terminates TLS)",
        ),
        Some(tls) => match certificate(tls, now) {
            Ok(check) => check,
            Err(why) => Check::fail("tls", why),
        },
    }
}

/// Reads the chain and key, checks they match, the chain links up, and how
/// long the leaf has left.
fn certificate(tls: &TlsConfig, now: chrono::DateTime<chrono::Utc>) -> Result<Check, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(&tls.cert)
        .and_then(|certs| certs.collect::<Result<_, _>>())
        .map_err(|e| format!("server.tls.cert: {}: {e}", tls.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "server.tls.cert: {} holds no certificate",
            tls.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("server.tls.key: {}: {e}", tls.key.display()))?;
    let parsed: Vec<X509Certificate> = chain
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, c)| c))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("server.tls.cert: {}: {e}", tls.cert.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("server.tls.key: {}: {e}", tls.key.display()))?;
    let key_spki = signing.public_key();
    if key_spki.as_deref() != Some(parsed[0].public_key().raw) {
        return Err(format!(
            "server.tls: the key {} does not belong to the certificate {}",
            tls.key.display(),
            tls.cert.display()
        ));
    }
    for (i, pair) in parsed.windows(2).enumerate() {
        if pair[0]
            .verify_signature(Some(pair[1].public_key()))
            .is_err()
        {
            return Err(format!(
                "server.tls.cert: certificate {} of the chain is not signed by certificate {} \
                 (put the leaf first, then each issuer)",
                i + 1,
                i + 2
            ));
        }
    }
    let leaf = &parsed[0];
    let not_before = leaf.validity().not_before.timestamp();
    let not_after = leaf.validity().not_after.timestamp();
    Ok(expiry_verdict(
        now.timestamp(),
        not_before,
        not_after,
        leaf.subject().to_string(),
    ))
}

/// FAIL when expired, not yet valid or under 7 days from expiry; WARN
/// under 30.
pub fn expiry_verdict(now: i64, not_before: i64, not_after: i64, subject: String) -> Check {
    let days = (not_after - now).div_euclid(86_400);
    if now < not_before {
        return Check::fail(
            "tls",
            format!("the certificate for {subject} is not valid yet"),
        );
    }
    if now >= not_after {
        return Check::fail(
            "tls",
            format!(
                "the certificate for {subject} expired {} days ago: renew it (playbooks/certificate-renewal.md)",
                -days
            ),
        );
    }
    if days < 7 {
        Check::fail(
            "tls",
            format!("the certificate for {subject} expires in {days} days: renew it now"),
        )
    } else if days < 30 {
        Check::warn(
            "tls",
            format!("the certificate for {subject} expires in {days} days: renew it soon"),
        )
    } else {
        Check::pass(
            "tls",
            format!("certificate for {subject} matches its key, valid for {days} more days"),
        )
    }
}

pub fn rate_limits(config: &Config) -> Check {
    // Zero is refused when the file is loaded; here, whether they make sense.
    let l = &config.limits;
    let summary = format!(
        "{}/min per user, {}/min per IP, {} logins/min per IP, {} turns at once per user",
        l.messages_per_minute_per_user,
        l.messages_per_minute_per_ip,
        l.logins_per_minute_per_ip,
        l.max_in_flight_per_user
    );
    if l.messages_per_minute_per_user > l.messages_per_minute_per_ip {
        return Check::warn(
            "rate_limits",
            format!("{summary}: the per-user limit can never be reached before the per-IP one"),
        );
    }
    Check::pass("rate_limits", summary)
}

pub fn registration(config: &Config) -> Check {
    if config.auth.open_registration && config.public_bind() {
        return Check::warn(
            "registration",
            format!(
                "open registration on a public address ({}): anyone who reaches it can make \
                 an account; set auth.open_registration = false and add users with \
                 `bothost user add`",
                config.server.bind
            ),
        );
    }
    let how = if config.auth.open_registration {
        "open (loopback only)"
    } else {
        "closed: `bothost user add` creates users"
    };
    Check::pass("registration", how)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::report::Status;

    #[test]
    fn certificates_fail_a_week_before_expiry_and_warn_a_month_before() {
        let day = 86_400;
        let at = |days_left: i64| expiry_verdict(0, -day, days_left * day, "x".into()).status;
        assert_eq!(at(-1), Status::Fail);
        assert_eq!(at(3), Status::Fail);
        assert_eq!(at(20), Status::Warn);
        assert_eq!(at(90), Status::Pass);
        assert_eq!(
            expiry_verdict(0, day, 90 * day, "x".into()).status,
            Status::Fail
        );
    }
}
