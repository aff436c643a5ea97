//! Signs and verifies COSE Sign1 governance messages from the command line, for the Python
//! interoperability test (`tests/python/test_cose_interop.py`).
//!
//! ```text
//! cose_tool sign --key KEY.pem --cert CERT.pem --msg-type TYPE [--proposal-id ID]
//!                --created-at SECONDS --content PAYLOAD --out MESSAGE.cose
//! cose_tool verify --cert CERT.pem --in MESSAGE.cose
//! ```
//!
//! `sign` uses the member ID of CERT.pem (hex SHA-256 of its DER) as `kid`, as CCF does.
//! `verify` checks the signature with CERT.pem's key and prints the headers as one JSON object;
//! it exits with status 1 if the message does not parse or verify.

use std::collections::BTreeMap;
use std::process::ExitCode;

use charter_crypto::{cose_sign1, Certificate, CoseSign1, SigningKey};

fn json_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn options(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut options = BTreeMap::new();
    let mut args = args.iter();
    while let Some(name) = args.next() {
        let name = name
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {name}"))?;
        let value = args
            .next()
            .ok_or_else(|| format!("--{name} needs a value"))?;
        options.insert(name.to_owned(), value.clone());
    }
    Ok(options)
}

fn required<'a>(options: &'a BTreeMap<String, String>, name: &str) -> Result<&'a str, String> {
    options
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| format!("missing --{name}"))
}

fn read(path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|error| format!("{path}: {error}"))
}

fn certificate(options: &BTreeMap<String, String>) -> Result<Certificate, String> {
    let pem = String::from_utf8(read(required(options, "cert")?)?).map_err(|e| e.to_string())?;
    Certificate::from_pem(&pem).map_err(|error| error.to_string())
}

fn sign(options: &BTreeMap<String, String>) -> Result<(), String> {
    let key_pem = String::from_utf8(read(required(options, "key")?)?).map_err(|e| e.to_string())?;
    let key = SigningKey::from_pem(&key_pem).map_err(|error| error.to_string())?;
    let cert = certificate(options)?;
    let created_at: u64 = required(options, "created-at")?
        .parse()
        .map_err(|error| format!("--created-at: {error}"))?;
    let payload = read(required(options, "content")?)?;
    let message = cose_sign1(
        &key,
        &cert.fingerprint_hex(),
        required(options, "msg-type")?,
        options.get("proposal-id").map(String::as_str),
        created_at,
        &payload,
    );
    let out = required(options, "out")?;
    std::fs::write(out, message).map_err(|error| format!("{out}: {error}"))
}

fn verify(options: &BTreeMap<String, String>) -> Result<(), String> {
    let cert = certificate(options)?;
    let bytes = read(required(options, "in")?)?;
    let message = CoseSign1::parse(&bytes).map_err(|error| error.to_string())?;
    let key = cert.public_key().map_err(|error| error.to_string())?;
    message.verify(&key).map_err(|error| error.to_string())?;
    let headers = &message.headers;
    let proposal_id = headers
        .proposal_id
        .as_deref()
        .map_or_else(|| "null".to_owned(), json_string);
    println!(
        "{{\"alg\": {}, \"kid\": {}, \"msg_type\": {}, \"proposal_id\": {}, \"created_at\": {}, \
         \"payload_hex\": {}, \"kid_is_cert_fingerprint\": {}}}",
        headers.alg,
        json_string(&headers.kid),
        json_string(&headers.msg_type),
        proposal_id,
        headers.created_at,
        json_string(&hex::encode(&message.payload)),
        headers.kid == cert.fingerprint_hex(),
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.split_first() {
        Some((command, rest)) if command == "sign" => options(rest).and_then(|o| sign(&o)),
        Some((command, rest)) if command == "verify" => options(rest).and_then(|o| verify(&o)),
        _ => Err("usage: cose_tool sign|verify --option value ...".to_owned()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("cose_tool: {error}");
            ExitCode::FAILURE
        }
    }
}
