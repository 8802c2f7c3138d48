//! Loaders on small fixture files, malformed ones included, and on the PaySim sample of
//! ../shared when it is there (read in place).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use fraud_core::pii::Tokenizer;
use fraud_core::transaction::read_history;
use fraud_datasets::loaders::{convert, convert_file, open, Format, LoadError, Options};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn run(format: Format, name: &str, opts: &Options) -> Result<(String, u64, u64), LoadError> {
    let mut out = Vec::new();
    let s = convert(format, open(&fixture(name))?, &mut out, opts)?;
    Ok((String::from_utf8(out).unwrap(), s.rows, s.frauds))
}

fn tokenizer() -> Tokenizer {
    Tokenizer::new(&[7u8; 32]).unwrap()
}

#[test]
fn ulb_maps_to_a_feature_table() {
    let (csv, rows, frauds) = run(Format::Ulb, "ulb_small.csv", &Options::default()).unwrap();
    assert_eq!((rows, frauds), (8, 2));
    let header = csv.lines().next().unwrap();
    assert!(header.starts_with("time_seconds,v1,v2,"));
    assert!(header.ends_with(",v28,amount,is_fraud"));
    assert_eq!(csv.lines().count(), 9);
    let err = run(Format::Ulb, "ulb_bad_class.csv", &Options::default()).unwrap_err();
    assert_eq!(err.to_string(), "row 2: column `Class`: `2` is not 0 or 1");
    // Another format's file is refused by its header, naming what is missing.
    let err = run(Format::Ulb, "paysim_small.csv", &Options::default()).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("not a ULB creditcard.csv file: missing column(s) Time, V1"),
        "{err}"
    );
}

#[test]
fn paysim_maps_to_transactions_plain_or_gzip() {
    let opts = Options {
        legit_weight: 256.36,
        ..Options::default()
    };
    let (csv, rows, frauds) = run(Format::Paysim, "paysim_small.csv", &opts).unwrap();
    assert_eq!((rows, frauds), (6, 3));
    let (gz, ..) = run(Format::Paysim, "paysim_small.csv.gz", &opts).unwrap();
    assert_eq!(csv, gz);
    let history = read_history(csv.as_bytes(), &tokenizer()).unwrap();
    let txs = &history.transactions;
    assert_eq!(txs.len(), 6);
    // step 1 = the origin hour; step 743 = 742 hours later.
    assert_eq!(txs[0].timestamp_us, 1_483_228_800_000_000);
    assert_eq!(
        txs[4].timestamp_us,
        (1_483_228_800 + 742 * 3_600) * 1_000_000
    );
    assert_eq!(txs[0].customer_id.as_deref(), Some("C1231006815"));
    assert_eq!(txs[0].merchant_id.as_deref(), Some("M1979787155"));
    assert_eq!(txs[0].amount.minor, 983_964);
    assert_eq!(txs[1].is_fraud, Some(true));
    assert!(history.ignored_columns.contains(&"weight".to_string()));
    let weights: Vec<&str> = csv
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap())
        .collect();
    assert_eq!(weights, ["256.36", "1", "1", "256.36", "256.36", "1"]);
    let err = run(Format::Paysim, "paysim_bad_type.csv", &opts).unwrap_err();
    assert_eq!(
        err.to_string(),
        "row 2: column `type`: `WIRE` is not a PaySim type"
    );
}

#[test]
fn sparkov_tokenizes_cards_and_drops_personal_data() {
    let opts = Options {
        tokenizer: Some(tokenizer()),
        ..Options::default()
    };
    let (csv, rows, frauds) = run(Format::Sparkov, "sparkov_small.csv", &opts).unwrap();
    assert_eq!((rows, frauds), (6, 1));
    let cards = std::fs::read_to_string(fixture("sparkov_cards.txt")).unwrap();
    for card in cards.lines() {
        assert!(!csv.contains(card), "a card number reached the output");
        assert!(
            !csv.contains(&card[card.len() - 8..]),
            "card digits reached the output"
        );
    }
    for personal in [
        "Jennifer",
        "Banks",
        "Perry Cove",
        "Psychologist",
        "1988-03-09",
        "fraud_",
    ] {
        assert!(!csv.contains(personal), "{personal} reached the output");
    }
    let history = read_history(csv.as_bytes(), &tokenizer()).unwrap();
    let txs = &history.transactions;
    // The same card gives the same token (rows 0 and 3 share a card).
    assert_eq!(txs[0].card.token, txs[3].card.token);
    assert_ne!(txs[0].card.token, txs[1].card.token);
    assert_eq!(txs[0].mcc, Some(5411));
    assert_eq!(txs[1].location, None, "online purchases have no place");
    assert!(txs[0].location.is_some());
    assert_eq!(txs[0].merchant_id.as_deref(), Some("Rippin, Kub and Mann"));
    // Without a key the file is refused; a bad card number is named without its digits.
    let err = run(Format::Sparkov, "sparkov_small.csv", &Options::default()).unwrap_err();
    assert!(err.to_string().contains("tokenization key"), "{err}");
    let err = run(Format::Sparkov, "sparkov_bad_card.csv", &opts).unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("row 2: column `cc_num`: not a card number"),
        "{text}"
    );
    let longest_digits = text
        .split(|c: char| !c.is_ascii_digit())
        .map(str::len)
        .max()
        .unwrap_or(0);
    assert!(longest_digits < 6, "{text}");
}

#[test]
fn malformed_files_get_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, Format, &str); 4] = [
        ("step,type\n", Format::Paysim, "not a PaySim file: missing column(s) amount"),
        ("", Format::Ulb, "not a ULB creditcard.csv file"),
        (
            "step,type,amount,nameOrig,oldbalanceOrg,newbalanceOrig,nameDest,oldbalanceDest,newbalanceDest,isFraud,isFlaggedFraud\n1,PAYMENT,1.0,C1,0,0,M1,0,0,0\n",
            Format::Paysim,
            "row 1: column `*`: has 10 fields; the header has 11",
        ),
        (
            "step,type,amount,nameOrig,oldbalanceOrg,newbalanceOrig,nameDest,oldbalanceDest,newbalanceDest,isFraud,isFlaggedFraud\n",
            Format::Paysim,
            "the file has no data rows",
        ),
    ];
    for (i, (text, format, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("{i}.csv"));
        std::fs::write(&path, text).unwrap();
        let err = convert_file(
            *format,
            &path,
            &dir.path().join("out.csv"),
            &Options::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with(want), "case {i}: {err}");
    }
    let err = "excel".parse::<Format>().unwrap_err().to_string();
    assert_eq!(
        err,
        "unknown format `excel` (known: ulb, paysim, sparkov, fdh)"
    );
}

/// The published PaySim sample (33,000 rows, every fraud of the full run), read in place.
#[test]
fn paysim_published_sample() {
    let dir = std::env::var("PAYSIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/datasets/paysim-sample")
        });
    let path = dir.join("paysim_sample_33k.csv.gz");
    if !path.exists() {
        eprintln!("skipped: {} is not here", path.display());
        return;
    }
    let opts = Options {
        legit_weight: 6_354_407.0 / 24_787.0,
        ..Options::default()
    };
    let mut out = Vec::new();
    let s = convert(Format::Paysim, open(&path).unwrap(), &mut out, &opts).unwrap();
    assert_eq!((s.rows, s.frauds), (33_000, 8_213));
    let history = read_history(out.as_slice(), &tokenizer()).unwrap();
    assert_eq!(history.transactions.len(), 33_000);
    // Weighted, the legitimate rows stand for the 6,354,407 of the full run.
    let text = String::from_utf8(out).unwrap();
    let total: f64 = text
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert!((total - (6_354_407.0 + 8_213.0)).abs() < 1.0, "{total}");
}

#[test]
fn the_handbooks_transactions_become_transactions_with_late_labels() {
    let text = "TRANSACTION_ID,TX_DATETIME,CUSTOMER_ID,TERMINAL_ID,TX_AMOUNT,TX_TIME_SECONDS,TX_TIME_DAYS,TX_FRAUD,TX_FRAUD_SCENARIO\n\
                0,2018-04-01 00:00:31,596,3156,57.160000000000004,31,0,0,0\n\
                1,2018-04-01 00:02:10,4961,3412,81.51,130,0,1,2\n\
                2,2018-04-01 00:07:56,2,1365,146.0,476,0,0,0\n";
    let opts = Options {
        report_delay_s: Some(7 * 86_400),
        ..Options::default()
    };
    let mut out = Vec::new();
    let s = convert(Format::Fdh, text.as_bytes(), &mut out, &opts).unwrap();
    assert_eq!((s.rows, s.frauds, s.rounded_amounts), (3, 1, 1));
    let csv = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "transaction_id,timestamp,amount,currency,card_token,customer_id,terminal_id,is_fraud,fraud_reported_at,fraud_scenario"
    );
    assert!(
        lines[1].starts_with("0,2018-04-01T00:00:31Z,57.16,USD,tok_"),
        "{}",
        lines[1]
    );
    assert!(
        lines[2].ends_with(",4961,3412,1,2018-04-08T00:02:10Z,2"),
        "{}",
        lines[2]
    );
    assert!(lines[3].contains(",146.00,"), "{}", lines[3]);
    // Valid transactions, the customer as the card.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("fdh.csv");
    std::fs::write(&p, &csv).unwrap();
    let h = read_history(open(&p).unwrap(), &tokenizer()).unwrap();
    assert_eq!(h.transactions.len(), 3);
    assert_eq!(
        h.transactions[1].fraud_reported_at_us,
        Some(h.transactions[1].timestamp_us + 7 * 86_400 * 1_000_000)
    );
    assert_eq!(h.ignored_columns, vec!["fraud_scenario"]);
    // Errors name the row and the column.
    let bad = text.replace("2018-04-01 00:02:10", "yesterday");
    let err = convert(Format::Fdh, bad.as_bytes(), &mut Vec::new(), &opts).unwrap_err();
    assert!(
        err.to_string().starts_with("row 2: column `TX_DATETIME`"),
        "{err}"
    );
    // The published file, read in place when it is here: every row converts.
    let real = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/datasets/fdh-simulated/fdh_simulated_transactions.csv.gz");
    if real.exists() {
        let s = convert(
            Format::Fdh,
            open(&real).unwrap(),
            std::io::sink(),
            &Options::default(),
        )
        .unwrap();
        assert_eq!(s.rows, 1_754_155);
        assert_eq!(s.frauds, 14_681);
    }
}
