//! `calc`: a safe arithmetic expression evaluator.
//!
//! A hand-written recursive-descent parser that evaluates as it parses: no code is
//! executed, input length and nesting depth are bounded, and every intermediate value
//! must be a finite number.
//!
//! Grammar (lowest precedence first):
//!
//! ```text
//! expr    := term (('+' | '-') term)*
//! term    := unary (('*' | '/' | '%') unary)*
//! unary   := ('-' | '+') unary | power
//! power   := primary ('^' unary)?            right-associative: 2^3^2 = 2^9, -2^2 = -4
//! primary := number | constant | name '(' expr (',' expr)* ')' | '(' expr ')'
//! ```

use maestro_sdk::{Structured, ToolError, export_plugin, tool};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Longest expression accepted, in bytes.
pub const MAX_LEN: usize = 4096;
/// Deepest nesting of parentheses, unary signs, powers and function calls.
pub const MAX_DEPTH: usize = 64;

/// Why an expression could not be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalcError {
    /// Not a well-formed expression.
    #[error("syntax error at position {position}: {message}")]
    Syntax {
        /// Byte offset of the problem.
        position: usize,
        /// What was expected.
        message: String,
    },
    /// A division or remainder by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// A result too large to represent.
    #[error("overflow: the result of {0} is too large")]
    Overflow(String),
    /// A result that is not a number (e.g. `sqrt(-1)`, `ln(0)`).
    #[error("undefined result: {0}")]
    Undefined(String),
    /// The expression is longer than [`MAX_LEN`].
    #[error("expression too long: {len} bytes, at most {MAX_LEN}")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The expression nests deeper than [`MAX_DEPTH`].
    #[error("expression nested too deeply: at most {MAX_DEPTH} levels")]
    TooDeep,
}

/// Evaluates an arithmetic expression.
pub fn evaluate(expression: &str) -> Result<f64, CalcError> {
    if expression.len() > MAX_LEN {
        return Err(CalcError::TooLong { len: expression.len() });
    }
    let mut parser = Parser { src: expression.as_bytes(), pos: 0, depth: 0 };
    let value = parser.expr()?;
    parser.skip_ws();
    if parser.pos < parser.src.len() {
        return Err(parser.error("unexpected input after the expression"));
    }
    Ok(value)
}

struct Parser<'a> {
    src: &'a [u8],
    pos: usize,
    depth: usize,
}

impl Parser<'_> {
    fn error(&self, message: &str) -> CalcError {
        CalcError::Syntax { position: self.pos, message: message.to_owned() }
    }

    fn skip_ws(&mut self) {
        while self.src.get(self.pos).is_some_and(u8::is_ascii_whitespace) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.skip_ws();
        self.src.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        if self.peek() == Some(byte) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Result<(), CalcError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH { Err(CalcError::TooDeep) } else { Ok(()) }
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    fn expr(&mut self) -> Result<f64, CalcError> {
        let mut value = self.term()?;
        loop {
            if self.eat(b'+') {
                value = finite(value + self.term()?, "an addition")?;
            } else if self.eat(b'-') {
                value = finite(value - self.term()?, "a subtraction")?;
            } else {
                return Ok(value);
            }
        }
    }

    fn term(&mut self) -> Result<f64, CalcError> {
        let mut value = self.unary()?;
        loop {
            if self.eat(b'*') {
                value = finite(value * self.unary()?, "a multiplication")?;
            } else if self.eat(b'/') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err(CalcError::DivisionByZero);
                }
                value = finite(value / divisor, "a division")?;
            } else if self.eat(b'%') {
                let divisor = self.unary()?;
                if divisor == 0.0 {
                    return Err(CalcError::DivisionByZero);
                }
                value = finite(value % divisor, "a remainder")?;
            } else {
                return Ok(value);
            }
        }
    }

    fn unary(&mut self) -> Result<f64, CalcError> {
        self.enter()?;
        let value = if self.eat(b'-') {
            -self.unary()?
        } else if self.eat(b'+') {
            self.unary()?
        } else {
            self.power()?
        };
        self.leave();
        Ok(value)
    }

    fn power(&mut self) -> Result<f64, CalcError> {
        let base = self.primary()?;
        if self.eat(b'^') {
            let exponent = self.unary()?;
            return finite(base.powf(exponent), "a power");
        }
        Ok(base)
    }

    fn primary(&mut self) -> Result<f64, CalcError> {
        match self.peek() {
            Some(b'(') => {
                self.pos += 1;
                self.enter()?;
                let value = self.expr()?;
                if !self.eat(b')') {
                    return Err(self.error("expected `)`"));
                }
                self.leave();
                Ok(value)
            }
            Some(c) if c.is_ascii_digit() || c == b'.' => self.number(),
            Some(c) if c.is_ascii_alphabetic() => self.name(),
            Some(_) => Err(self.error("expected a number, a name or `(`")),
            None => Err(self.error("unexpected end of the expression")),
        }
    }

    fn number(&mut self) -> Result<f64, CalcError> {
        let start = self.pos;
        let digits = |p: &mut Self| {
            let from = p.pos;
            while p.src.get(p.pos).is_some_and(u8::is_ascii_digit) {
                p.pos += 1;
            }
            p.pos - from
        };
        let mut count = digits(self);
        if self.src.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            count += digits(self);
        }
        if count == 0 {
            self.pos = start;
            return Err(self.error("expected digits"));
        }
        if matches!(self.src.get(self.pos), Some(b'e' | b'E')) {
            let mark = self.pos;
            self.pos += 1;
            if matches!(self.src.get(self.pos), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                // Not an exponent (e.g. `2e` is a number followed by the name `e`).
                self.pos = mark;
            }
        }
        let text = std::str::from_utf8(&self.src[start..self.pos]).expect("digits, '.', 'e' and signs are ASCII");
        let value: f64 = text
            .parse()
            .map_err(|_| CalcError::Syntax { position: start, message: format!("invalid number `{text}`") })?;
        finite(value, "a number literal")
    }

    fn name(&mut self) -> Result<f64, CalcError> {
        let start = self.pos;
        while self.src.get(self.pos).is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_') {
            self.pos += 1;
        }
        let name =
            std::str::from_utf8(&self.src[start..self.pos]).expect("ASCII letters and digits").to_ascii_lowercase();
        if !self.eat(b'(') {
            return match name.as_str() {
                "pi" => Ok(std::f64::consts::PI),
                "e" => Ok(std::f64::consts::E),
                "tau" => Ok(std::f64::consts::TAU),
                _ => Err(CalcError::Syntax {
                    position: start,
                    message: format!("unknown name `{name}` (constants: pi, e, tau)"),
                }),
            };
        }
        self.enter()?;
        let mut args = vec![self.expr()?];
        while self.eat(b',') {
            args.push(self.expr()?);
        }
        if !self.eat(b')') {
            return Err(self.error("expected `,` or `)` in the argument list"));
        }
        self.leave();
        call(&name, &args, start)
    }
}

fn finite(value: f64, what: &str) -> Result<f64, CalcError> {
    if value.is_nan() {
        Err(CalcError::Undefined(format!("{what} is not a number")))
    } else if value.is_infinite() {
        Err(CalcError::Overflow(what.to_owned()))
    } else {
        Ok(value)
    }
}

/// The functions, with their argument counts (`None`: one or more).
const FUNCTIONS: &[(&str, Option<usize>)] = &[
    ("sqrt", Some(1)),
    ("cbrt", Some(1)),
    ("abs", Some(1)),
    ("round", Some(1)),
    ("floor", Some(1)),
    ("ceil", Some(1)),
    ("trunc", Some(1)),
    ("exp", Some(1)),
    ("ln", Some(1)),
    ("log10", Some(1)),
    ("log2", Some(1)),
    ("sin", Some(1)),
    ("cos", Some(1)),
    ("tan", Some(1)),
    ("asin", Some(1)),
    ("acos", Some(1)),
    ("atan", Some(1)),
    ("min", None),
    ("max", None),
    ("pow", Some(2)),
    ("hypot", Some(2)),
];

fn call(name: &str, args: &[f64], position: usize) -> Result<f64, CalcError> {
    let Some((_, arity)) = FUNCTIONS.iter().find(|(n, _)| *n == name) else {
        let known: Vec<&str> = FUNCTIONS.iter().map(|(n, _)| *n).collect();
        return Err(CalcError::Syntax {
            position,
            message: format!("unknown function `{name}` (known: {})", known.join(", ")),
        });
    };
    if let Some(n) = arity
        && args.len() != *n
    {
        return Err(CalcError::Syntax {
            position,
            message: format!("`{name}` takes {n} argument(s), got {}", args.len()),
        });
    }
    let x = args[0];
    let domain = |ok: bool, what: &str| {
        if ok { Ok(()) } else { Err(CalcError::Undefined(format!("{name} of {what}"))) }
    };
    let value = match name {
        "sqrt" => {
            domain(x >= 0.0, "a negative number")?;
            x.sqrt()
        }
        "cbrt" => x.cbrt(),
        "abs" => x.abs(),
        "round" => x.round(),
        "floor" => x.floor(),
        "ceil" => x.ceil(),
        "trunc" => x.trunc(),
        "exp" => x.exp(),
        "ln" | "log10" | "log2" => {
            domain(x > 0.0, "a number that is not positive")?;
            match name {
                "ln" => x.ln(),
                "log10" => x.log10(),
                _ => x.log2(),
            }
        }
        "sin" => x.sin(),
        "cos" => x.cos(),
        "tan" => x.tan(),
        "asin" | "acos" => {
            domain((-1.0..=1.0).contains(&x), "a number outside [-1, 1]")?;
            if name == "asin" { x.asin() } else { x.acos() }
        }
        "atan" => x.atan(),
        "min" => args.iter().copied().fold(f64::INFINITY, f64::min),
        "max" => args.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        "pow" => x.powf(args[1]),
        "hypot" => x.hypot(args[1]),
        _ => unreachable!("every name in FUNCTIONS has an arm"),
    };
    finite(value, &format!("{name}()"))
}

/// Arguments of `evaluate`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
struct EvaluateArgs {
    /// The expression, e.g. `2 * (3 + 4) ^ 2 / sqrt(16)`. Operators: + - * / % ^ and
    /// unary minus; functions: sqrt, cbrt, abs, round, floor, ceil, trunc, exp, ln,
    /// log10, log2, sin, cos, tan, asin, acos, atan, min, max, pow, hypot; constants:
    /// pi, e, tau. Angles are in radians.
    expression: String,
}

/// Result of `evaluate`.
#[derive(Debug, Serialize, JsonSchema)]
struct Evaluated {
    /// The value of the expression.
    value: f64,
}

fn evaluate_tool(args: EvaluateArgs) -> Result<Structured<Evaluated>, ToolError> {
    match evaluate(&args.expression) {
        Ok(value) => Ok(Structured(Evaluated { value })),
        Err(e @ (CalcError::Syntax { .. } | CalcError::TooLong { .. } | CalcError::TooDeep)) => {
            Err(ToolError::invalid(e))
        }
        Err(e) => Err(ToolError::failed(e)),
    }
}

export_plugin! {
    tools: [
        tool(
            "evaluate",
            "Evaluates an arithmetic expression exactly as written (no code execution) and returns its value",
            evaluate_tool,
        )
        .title("Calculator")
        .read_only()
        .idempotent(),
    ],
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn eval(s: &str) -> f64 {
        evaluate(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn respects_precedence_and_associativity() {
        assert_eq!(eval("1 + 2 * 3"), 7.0);
        assert_eq!(eval("(1 + 2) * 3"), 9.0);
        assert_eq!(eval("10 - 4 - 3"), 3.0);
        assert_eq!(eval("2 ^ 3 ^ 2"), 512.0);
        assert_eq!(eval("-2 ^ 2"), -4.0);
        assert_eq!(eval("2 ^ -1"), 0.5);
        assert_eq!(eval("7 % 4"), 3.0);
        assert_eq!(eval("--3"), 3.0);
        assert_eq!(eval("24 / 4 / 2"), 3.0);
    }

    #[test]
    fn parses_numbers() {
        assert_eq!(eval("1.5e3"), 1500.0);
        assert_eq!(eval(".5"), 0.5);
        assert_eq!(eval("3."), 3.0);
        assert_eq!(eval("2E-2"), 0.02);
        // No implicit multiplication: `2e` is a number followed by a name.
        assert!(matches!(evaluate("2e"), Err(CalcError::Syntax { position: 1, .. })));
    }

    #[test]
    fn knows_functions_and_constants() {
        assert_eq!(eval("sqrt(16)"), 4.0);
        assert_eq!(eval("abs(-3)"), 3.0);
        assert_eq!(eval("min(3, 1, 2)"), 1.0);
        assert_eq!(eval("max(3, 1, 2)"), 3.0);
        assert_eq!(eval("round(2.5)"), 3.0);
        assert_eq!(eval("floor(-1.5)"), -2.0);
        assert_eq!(eval("ceil(1.2)"), 2.0);
        assert!(close(eval("ln(e)"), 1.0));
        assert!(close(eval("log10(1000)"), 3.0));
        assert!(close(eval("sin(pi / 2)"), 1.0));
        assert!(close(eval("cos(0)"), 1.0));
        assert!(close(eval("PI"), std::f64::consts::PI));
    }

    #[test]
    fn division_by_zero_is_an_error() {
        assert_eq!(evaluate("1 / 0"), Err(CalcError::DivisionByZero));
        assert_eq!(evaluate("1 % (2 - 2)"), Err(CalcError::DivisionByZero));
    }

    #[test]
    fn overflow_and_nan_are_errors() {
        assert!(matches!(evaluate("10 ^ 400"), Err(CalcError::Overflow(_))));
        assert!(matches!(evaluate("1e308 * 10"), Err(CalcError::Overflow(_))));
        assert!(matches!(evaluate("1e999"), Err(CalcError::Overflow(_))));
        assert!(matches!(evaluate("sqrt(-1)"), Err(CalcError::Undefined(_))));
        assert!(matches!(evaluate("ln(0)"), Err(CalcError::Undefined(_))));
        assert!(matches!(evaluate("(-8) ^ 0.5"), Err(CalcError::Undefined(_))));
    }

    #[test]
    fn syntax_errors_say_where() {
        let err = evaluate("1 + * 2").expect_err("syntax");
        assert_eq!(err.to_string(), "syntax error at position 4: expected a number, a name or `(`");
        assert!(matches!(evaluate("(1 + 2"), Err(CalcError::Syntax { .. })));
        assert!(matches!(evaluate("1 2"), Err(CalcError::Syntax { .. })));
        assert!(matches!(evaluate(""), Err(CalcError::Syntax { .. })));
        assert!(evaluate("foo(1)").expect_err("unknown").to_string().contains("unknown function `foo`"));
        assert!(evaluate("x + 1").expect_err("unknown").to_string().contains("unknown name `x`"));
        assert!(evaluate("sqrt(1, 2)").expect_err("arity").to_string().contains("takes 1 argument"));
        assert!(matches!(evaluate("1 + \u{e9}"), Err(CalcError::Syntax { .. })));
    }

    #[test]
    fn limits_length_and_depth() {
        let long = "1+".repeat(MAX_LEN) + "1";
        assert!(matches!(evaluate(&long), Err(CalcError::TooLong { .. })));
        let deep = "(".repeat(MAX_DEPTH + 1) + "1" + &")".repeat(MAX_DEPTH + 1);
        assert_eq!(evaluate(&deep), Err(CalcError::TooDeep));
        assert_eq!(evaluate(&"-".repeat(1000)), Err(CalcError::TooDeep));
        let fine = "(".repeat(20) + "1" + &")".repeat(20);
        assert_eq!(eval(&fine), 1.0);
    }

    #[test]
    fn tool_returns_structured_value_and_maps_errors() {
        let plugin = maestro_plugin();
        let out = plugin.call("evaluate", &json!({"expression": "2 * (3 + 4)"}).to_string()).expect("evaluates");
        assert_eq!(out.structured, Some(json!({"value": 14.0})));
        let spec = &plugin.tool_specs()[0];
        assert_eq!(spec.input_schema["required"], json!(["expression"]));
        assert_eq!(spec.output_schema.as_ref().expect("structured")["properties"]["value"]["type"], "number");
        assert!(matches!(
            plugin.call("evaluate", r#"{"expression":"1/0"}"#),
            Err(ToolError::Failed(m)) if m == "division by zero"
        ));
        assert!(matches!(plugin.call("evaluate", r#"{"expression":"1+"}"#), Err(ToolError::InvalidArguments(_))));
        assert!(matches!(plugin.call("evaluate", r#"{"expr":"1"}"#), Err(ToolError::InvalidArguments(_))));
    }
}
