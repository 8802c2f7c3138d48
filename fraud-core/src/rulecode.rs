//! Rules evaluated natively: the common subset of CEL rules (comparisons, `&&`, `||`, `!`,
//! arithmetic on doubles, `in` a list of literals, over `score`, `features.<name>` and the
//! transaction's fields) compiled from CEL's own syntax tree to a small tree evaluated
//! straight on the transaction, the feature row and the score. No CEL context (a map of the
//! transaction's fields and of the features, built per transaction) is needed, which was
//! most of a rule's cost. A rule outside the subset keeps CEL's interpreter.
//!
//! The answers are CEL's, errors included: a comparison CEL cannot make (NaN, a missing
//! feature) is an error, and `&&` / `||` absorb errors as CEL does (`error || true` is
//! true, `error && false` false, anything else with an error an error); a rule fires only
//! when it yields `true`. A differential test checks the two on random rules and values.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};

use crate::transaction::{Channel, Transaction};

/// A value's static type in the subset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Double,
    Int,
    Str,
}

/// A transaction text field, as CEL's `tx` map holds it (missing: "").
#[derive(Debug, Clone, Copy)]
enum TextField {
    TransactionId,
    Currency,
    CardToken,
    CustomerId,
    MerchantId,
    TerminalId,
    Channel,
    CardCountry,
    MerchantCountry,
    IpCountry,
    DeviceId,
}

#[derive(Debug, Clone, Copy)]
enum Cmp {
    Lt,
    Le,
    Gt,
    Ge,
}

#[derive(Debug, Clone, Copy)]
enum Arith {
    Add,
    Sub,
    Mul,
}

#[derive(Debug, Clone)]
enum Node {
    Bool(bool),
    Double(f64),
    Int(i64),
    Str(String),
    Score,
    /// A feature by its position in the row it was compiled for, and its name (checked:
    /// a row of another spec is searched by name, as CEL does).
    Feature(usize, String),
    Amount,
    Mcc,
    Text(TextField),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
    Compare(Cmp, Box<Node>, Box<Node>),
    Equal(bool, Box<Node>, Box<Node>),
    Arith(Arith, Box<Node>, Box<Node>),
    Neg(Box<Node>),
    In(Box<Node>, Vec<Node>),
}

/// A value while evaluating: `Err` is CEL's error.
#[derive(Debug, Clone, Copy)]
enum V<'a> {
    B(bool),
    D(f64),
    I(i64),
    S(&'a str),
    Err,
}

/// A rule compiled to native code.
#[derive(Debug, Clone)]
pub struct Native {
    root: Node,
}

/// Compiles `expr` (a parsed rule) when it is in the subset; `names` are the feature row's.
pub fn compile(expr: &IdedExpr, names: &[String]) -> Option<Native> {
    let (root, ty) = node(expr, names)?;
    (ty == Ty::Bool).then_some(Native { root })
}

fn text_field(name: &str) -> Option<TextField> {
    Some(match name {
        "transaction_id" => TextField::TransactionId,
        "currency" => TextField::Currency,
        "card_token" => TextField::CardToken,
        "customer_id" => TextField::CustomerId,
        "merchant_id" => TextField::MerchantId,
        "terminal_id" => TextField::TerminalId,
        "channel" => TextField::Channel,
        "card_country" => TextField::CardCountry,
        "merchant_country" => TextField::MerchantCountry,
        "ip_country" => TextField::IpCountry,
        "device_id" => TextField::DeviceId,
        _ => return None,
    })
}

fn node(e: &IdedExpr, names: &[String]) -> Option<(Node, Ty)> {
    match &e.expr {
        Expr::Literal(l) => Some(match l {
            LiteralValue::Boolean(b) => (Node::Bool(*b.inner()), Ty::Bool),
            LiteralValue::Double(d) => (Node::Double(*d.inner()), Ty::Double),
            LiteralValue::Int(i) => (Node::Int(*i.inner()), Ty::Int),
            LiteralValue::String(s) => (Node::Str(s.inner().to_string()), Ty::Str),
            _ => return None,
        }),
        Expr::Ident(name) if name == "score" => Some((Node::Score, Ty::Double)),
        Expr::Select(s) if !s.test => {
            let Expr::Ident(root) = &s.operand.expr else {
                return None;
            };
            match root.as_str() {
                "features" => {
                    let i = names.iter().position(|n| *n == s.field)?;
                    Some((Node::Feature(i, s.field.clone()), Ty::Double))
                }
                "tx" => match s.field.as_str() {
                    "amount" => Some((Node::Amount, Ty::Double)),
                    "mcc" => Some((Node::Mcc, Ty::Int)),
                    f => Some((Node::Text(text_field(f)?), Ty::Str)),
                },
                _ => None,
            }
        }
        Expr::Call(c) if c.target.is_none() => call(&c.func_name, &c.args, names),
        _ => None,
    }
}

fn call(f: &str, args: &[IdedExpr], names: &[String]) -> Option<(Node, Ty)> {
    let b = |n: Node| Box::new(n);
    match (f, args) {
        (operators::LOGICAL_NOT, [a]) => {
            let (a, t) = node(a, names)?;
            (t == Ty::Bool).then(|| (Node::Not(b(a)), Ty::Bool))
        }
        (operators::NEGATE, [a]) => {
            let (a, t) = node(a, names)?;
            (t == Ty::Double).then(|| (Node::Neg(b(a)), Ty::Double))
        }
        (operators::IN, [x, list]) => {
            let (x, tx) = node(x, names)?;
            let Expr::List(l) = &list.expr else {
                return None;
            };
            if !l.optional_indices.is_empty() {
                return None;
            }
            let mut items = Vec::with_capacity(l.elements.len());
            for el in &l.elements {
                // Literals of the same type only.
                let (n, t) = node(el, names)?;
                let literal = matches!(n, Node::Double(_) | Node::Int(_) | Node::Str(_));
                let numbers = |t: Ty| t == Ty::Double || t == Ty::Int;
                if !literal || (t != tx && !(numbers(t) && numbers(tx))) {
                    return None;
                }
                items.push(n);
            }
            Some((Node::In(b(x), items), Ty::Bool))
        }
        (_, [l, r]) => {
            let (l, tl) = node(l, names)?;
            let (r, tr) = node(r, names)?;
            let numeric = |t: Ty| t == Ty::Double || t == Ty::Int;
            match f {
                operators::LOGICAL_AND | operators::LOGICAL_OR => {
                    if tl != Ty::Bool || tr != Ty::Bool {
                        return None;
                    }
                    let n = if f == operators::LOGICAL_AND {
                        Node::And(b(l), b(r))
                    } else {
                        Node::Or(b(l), b(r))
                    };
                    Some((n, Ty::Bool))
                }
                operators::LESS
                | operators::LESS_EQUALS
                | operators::GREATER
                | operators::GREATER_EQUALS => {
                    if !(tl == tr || numeric(tl) && numeric(tr)) || tl == Ty::Bool {
                        return None;
                    }
                    let op = match f {
                        operators::LESS => Cmp::Lt,
                        operators::LESS_EQUALS => Cmp::Le,
                        operators::GREATER => Cmp::Gt,
                        _ => Cmp::Ge,
                    };
                    Some((Node::Compare(op, b(l), b(r)), Ty::Bool))
                }
                operators::EQUALS | operators::NOT_EQUALS => {
                    // Numbers compare by value across int and double, as in CEL.
                    if tl != tr && !(numeric(tl) && numeric(tr)) {
                        return None;
                    }
                    Some((
                        Node::Equal(f == operators::NOT_EQUALS, b(l), b(r)),
                        Ty::Bool,
                    ))
                }
                operators::ADD | operators::SUBSTRACT | operators::MULTIPLY => {
                    if tl != Ty::Double || tr != Ty::Double {
                        return None;
                    }
                    let op = match f {
                        operators::ADD => Arith::Add,
                        operators::SUBSTRACT => Arith::Sub,
                        _ => Arith::Mul,
                    };
                    Some((Node::Arith(op, b(l), b(r)), Ty::Double))
                }
                _ => None,
            }
        }
        _ => None,
    }
}

fn channel_name(c: Channel) -> &'static str {
    match c {
        Channel::CardPresent => "card_present",
        Channel::Contactless => "contactless",
        Channel::Ecommerce => "ecommerce",
        Channel::Moto => "moto",
        Channel::Atm => "atm",
        Channel::Recurring => "recurring",
    }
}

struct Input<'a> {
    tx: &'a Transaction,
    names: &'a [String],
    features: &'a [f64],
    score: f64,
}

fn text<'a>(tx: &'a Transaction, f: TextField) -> &'a str {
    let opt = |v: &'a Option<String>| v.as_deref().unwrap_or("");
    match f {
        TextField::TransactionId => &tx.transaction_id,
        TextField::Currency => &tx.currency,
        TextField::CardToken => &tx.card.token,
        TextField::CustomerId => opt(&tx.customer_id),
        TextField::MerchantId => opt(&tx.merchant_id),
        TextField::TerminalId => opt(&tx.terminal_id),
        TextField::Channel => tx.channel.map_or("", channel_name),
        TextField::CardCountry => opt(&tx.card_country),
        TextField::MerchantCountry => opt(&tx.merchant_country),
        TextField::IpCountry => opt(&tx.ip_country),
        TextField::DeviceId => opt(&tx.device_id),
    }
}

fn as_bool(v: V<'_>) -> Option<bool> {
    match v {
        V::B(b) => Some(b),
        _ => None,
    }
}

/// CEL's ordering of two values (`None`: CEL fails).
fn order(a: V<'_>, b: V<'_>) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (V::D(x), V::D(y)) => x.partial_cmp(&y),
        (V::I(x), V::I(y)) => Some(x.cmp(&y)),
        (V::I(x), V::D(y)) => (x as f64).partial_cmp(&y),
        (V::D(x), V::I(y)) => x.partial_cmp(&(y as f64)),
        (V::S(x), V::S(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn equal(a: V<'_>, b: V<'_>) -> bool {
    match (a, b) {
        (V::D(x), V::D(y)) => x == y,
        (V::I(x), V::I(y)) => x == y,
        (V::I(x), V::D(y)) | (V::D(y), V::I(x)) => x as f64 == y,
        (V::S(x), V::S(y)) => x == y,
        (V::B(x), V::B(y)) => x == y,
        _ => false,
    }
}

fn eval<'a>(n: &'a Node, i: &Input<'a>) -> V<'a> {
    match n {
        Node::Bool(b) => V::B(*b),
        Node::Double(d) => V::D(*d),
        Node::Int(x) => V::I(*x),
        Node::Str(s) => V::S(s),
        Node::Score => V::D(i.score),
        Node::Feature(k, name) => {
            let k = if i.names.get(*k) == Some(name) {
                Some(*k)
            } else {
                i.names.iter().position(|n| n == name)
            };
            k.and_then(|k| i.features.get(k))
                .map_or(V::Err, |v| V::D(*v))
        }
        Node::Amount => V::D(i.tx.amount.as_f64()),
        Node::Mcc => V::I(i.tx.mcc.map_or(-1, i64::from)),
        Node::Text(f) => V::S(text(i.tx, *f)),
        Node::And(l, r) => {
            let left = as_bool(eval(l, i));
            if left == Some(false) {
                return V::B(false);
            }
            match (left, as_bool(eval(r, i))) {
                (Some(true), Some(x)) => V::B(x),
                (None, Some(false)) => V::B(false),
                _ => V::Err,
            }
        }
        Node::Or(l, r) => {
            let left = as_bool(eval(l, i));
            if left == Some(true) {
                return V::B(true);
            }
            match (left, as_bool(eval(r, i))) {
                (Some(false), Some(x)) => V::B(x),
                (None, Some(true)) => V::B(true),
                _ => V::Err,
            }
        }
        Node::Not(a) => as_bool(eval(a, i)).map_or(V::Err, |b| V::B(!b)),
        Node::Compare(op, l, r) => {
            let (a, b) = (eval(l, i), eval(r, i));
            match order(a, b) {
                None => V::Err,
                Some(o) => V::B(match op {
                    Cmp::Lt => o.is_lt(),
                    Cmp::Le => o.is_le(),
                    Cmp::Gt => o.is_gt(),
                    Cmp::Ge => o.is_ge(),
                }),
            }
        }
        Node::Equal(negate, l, r) => {
            let (a, b) = (eval(l, i), eval(r, i));
            if matches!(a, V::Err) || matches!(b, V::Err) {
                return V::Err;
            }
            V::B(equal(a, b) != *negate)
        }
        Node::Arith(op, l, r) => match (eval(l, i), eval(r, i)) {
            (V::D(a), V::D(b)) => V::D(match op {
                Arith::Add => a + b,
                Arith::Sub => a - b,
                Arith::Mul => a * b,
            }),
            _ => V::Err,
        },
        Node::Neg(a) => match eval(a, i) {
            V::D(x) => V::D(-x),
            _ => V::Err,
        },
        Node::In(x, items) => {
            let x = eval(x, i);
            if matches!(x, V::Err) {
                return V::Err;
            }
            V::B(items.iter().any(|it| equal(x, eval(it, i))))
        }
    }
}

impl Native {
    /// Whether the rule yields `true` on `tx` with the feature row `features` (named
    /// `names`) and `score`.
    pub fn fires(&self, tx: &Transaction, names: &[String], features: &[f64], score: f64) -> bool {
        let input = Input {
            tx,
            names,
            features,
            score,
        };
        matches!(eval(&self.root, &input), V::B(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A small deterministic generator (xorshift64*).
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
            xs[(self.next() % xs.len() as u64) as usize]
        }
    }

    fn double(r: &mut Rng, depth: u32) -> String {
        let atoms = [
            "score",
            "features.a",
            "features.b",
            "tx.amount",
            "0.5",
            "1.0",
            "100.0",
            "0.0",
            "2.5",
        ];
        match if depth == 0 { 0 } else { r.next() % 5 } {
            0..=2 => r.pick(&atoms).to_string(),
            3 => format!(
                "({} {} {})",
                double(r, depth - 1),
                r.pick(&["+", "-", "*"]),
                double(r, depth - 1)
            ),
            _ => format!("-{}", double(r, depth - 1)),
        }
    }

    fn boolean(r: &mut Rng, depth: u32) -> String {
        let cmp = ["<", "<=", ">", ">=", "==", "!="];
        match if depth == 0 {
            r.next() % 5
        } else {
            r.next() % 10
        } {
            0 | 1 => format!(
                "{} {} {}",
                double(r, depth.min(2)),
                r.pick(&cmp),
                double(r, depth.min(2))
            ),
            2 => format!(
                "{} {} {}",
                r.pick(&["tx.mcc", "5411", "7"]),
                r.pick(&cmp),
                r.pick(&["tx.mcc", "5411", "7", "score", "tx.amount"])
            ),
            3 => format!(
                "{} {} {}",
                r.pick(&["tx.channel", "tx.merchant_country", "'ecommerce'", "''"]),
                r.pick(&cmp),
                r.pick(&["tx.channel", "'BE'", "'ecommerce'", "tx.ip_country"])
            ),
            4 if r.next().is_multiple_of(2) => format!(
                "{} in {}",
                r.pick(&["tx.merchant_country", "tx.channel"]),
                r.pick(&["['BE', 'FR']", "['ecommerce', 'moto']", "[]"])
            ),
            4 => format!(
                "{} in {}",
                r.pick(&["tx.mcc", "features.a", "score"]),
                r.pick(&["[5411, 7.0]", "[1.0, 0.5]", "[0, 1]"])
            ),
            5 => format!("!({})", boolean(r, depth - 1)),
            6 | 7 => format!("({} && {})", boolean(r, depth - 1), boolean(r, depth - 1)),
            _ => format!("({} || {})", boolean(r, depth - 1), boolean(r, depth - 1)),
        }
    }

    #[test]
    fn native_rules_answer_as_cel_does_on_random_rules_and_values() {
        let names = vec!["a".to_string(), "b".to_string()];
        let setup = crate::decision::CelSetup {
            env: Arc::new(cel::Env::stdlib()),
            features: None,
        };
        let base = crate::decision::sample_transaction().unwrap_or_else(|e| panic!("{e}"));
        let values = [0.0, 1.0, -1.0, f64::NAN, 0.5, 1e300, -0.0, 100.0, 2.5];
        let mut r = Rng(0x9E37_79B9_7F4A_7C15);
        let mut compared = 0;
        let mut fired = 0;
        for _ in 0..1500 {
            let src = boolean(&mut r, 3);
            let program = cel::Program::compile(&src).unwrap_or_else(|e| panic!("{src}: {e}"));
            let native = compile(program.expression(), &names)
                .unwrap_or_else(|| panic!("{src} is in the subset"));
            for _ in 0..12 {
                let mut tx = base.clone();
                let pick = |r: &mut Rng| values[(r.next() % values.len() as u64) as usize];
                tx.amount.minor = (r.next() % 40_000) as i64;
                tx.mcc = [None, Some(5411), Some(7)][(r.next() % 3) as usize];
                tx.channel =
                    [None, Some(Channel::Ecommerce), Some(Channel::Moto)][(r.next() % 3) as usize];
                tx.merchant_country = [None, Some("BE".to_string()), Some("FR".to_string())]
                    [(r.next() % 3) as usize]
                    .clone();
                let features = [pick(&mut r), pick(&mut r)];
                let score = pick(&mut r);
                let ctx = crate::decision::cel_context(&setup, &tx, &names, &features, score)
                    .unwrap_or_else(|e| panic!("{e}"));
                let by_cel = matches!(program.execute(&ctx), Ok(cel::Value::Bool(true)));
                assert_eq!(
                    native.fires(&tx, &names, &features, score),
                    by_cel,
                    "{src} with a={:?} b={:?} score={score:?} amount={} mcc={:?} channel={:?} country={:?}",
                    features[0],
                    features[1],
                    tx.amount.as_f64(),
                    tx.mcc,
                    tx.channel,
                    tx.merchant_country
                );
                compared += 1;
                fired += usize::from(by_cel);
            }
        }
        // Both outcomes were exercised.
        assert!(
            fired > compared / 10 && fired < compared * 9 / 10,
            "{fired} of {compared}"
        );
    }

    #[test]
    fn features_are_found_by_name_in_a_row_of_another_spec() {
        let compiled_for = vec!["a".to_string(), "b".to_string()];
        let p = cel::Program::compile("features.b > 1.0").unwrap_or_else(|e| panic!("{e}"));
        let n = compile(p.expression(), &compiled_for).unwrap_or_else(|| unreachable!());
        let tx = crate::decision::sample_transaction().unwrap_or_else(|e| panic!("{e}"));
        assert!(n.fires(&tx, &compiled_for, &[0.0, 2.0], 0.0));
        let other = vec!["b".to_string(), "c".to_string(), "a".to_string()];
        assert!(n.fires(&tx, &other, &[2.0, 0.0, 0.0], 0.0));
        assert!(!n.fires(&tx, &other, &[0.0, 2.0, 2.0], 0.0));
        // Absent: CEL fails, the rule does not fire.
        assert!(!n.fires(&tx, &["a".to_string()], &[5.0], 0.0));
    }

    #[test]
    fn rules_outside_the_subset_keep_cel() {
        let names = vec!["a".to_string()];
        for src in [
            "has(features.a)",
            "size(tx.currency) > 2",
            "features.nope > 1.0",
            "tx.amount > 1u",
            "tx.amount / 2.0 > 1.0",
            "tx.mcc + 1 > 2",
            "tx.amount",
            "tx.amount > 1.0 ? true : false",
            "features['a'] > 1.0",
            "tx.currency.startsWith('E')",
        ] {
            let p = cel::Program::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            assert!(compile(p.expression(), &names).is_none(), "{src}");
        }
    }
}
