//! Plain-text tables with aligned columns, for terminal output and the
//! README. Every command's table is built here: from a list of
//! [`Column`]s (a header beside what each row shows under it) over its
//! rows, or from named values ([`Table::of_pairs`]).

/// A column of a table of `T`s: its header and what a `T` shows in it.
pub struct Column<T> {
    header: &'static str,
    cell: fn(&T) -> String,
}

impl<T> Column<T> {
    pub fn new(header: &'static str, cell: fn(&T) -> String) -> Self {
        Column { header, cell }
    }
}

/// A table: a header row and data rows, printed with columns aligned.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Table {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    /// One row per item of `rows`, one column per item of `columns`.
    pub fn of<'a, T: 'a>(columns: &[Column<T>], rows: impl IntoIterator<Item = &'a T>) -> Self {
        let mut t = Table::new(columns.iter().map(|c| c.header));
        for r in rows {
            t.row(columns.iter().map(|c| (c.cell)(r)));
        }
        t
    }

    /// Two columns, headed `header`: a name and its value per row.
    pub fn of_pairs<'a>(
        header: [&str; 2],
        pairs: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Self {
        let mut t = Table::new(header);
        for (name, value) in pairs {
            t.row([name.to_string(), value]);
        }
        t
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    fn widths(&self) -> Vec<usize> {
        let mut w: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                if i < w.len() {
                    w[i] = w[i].max(c.chars().count());
                }
            }
        }
        w
    }

    /// The table as lines of text, a rule under the header.
    pub fn render(&self) -> String {
        let w = self.widths();
        let line = |cells: &[String]| {
            let mut s = String::new();
            for (i, c) in cells.iter().enumerate() {
                if i > 0 {
                    s.push_str("  ");
                }
                s.push_str(c);
                if i + 1 < cells.len() {
                    s.extend(std::iter::repeat_n(' ', w[i] - c.chars().count()));
                }
            }
            s.push('\n');
            s
        };
        let mut out = line(&self.header);
        let rule: Vec<String> = w.iter().map(|&n| "-".repeat(n)).collect();
        out.push_str(&line(&rule));
        for r in &self.rows {
            out.push_str(&line(r));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(["a", "long header"]);
        t.row(["wide cell", "x"]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "a          long header");
        assert_eq!(lines[1], "---------  -----------");
        assert_eq!(lines[2], "wide cell  x");
    }

    #[test]
    fn columns_and_pairs_build_the_same_table() {
        let columns = [
            Column::<(u32, &str)>::new("n", |r| r.0.to_string()),
            Column::new("name", |r| r.1.to_string()),
        ];
        let of = Table::of(&columns, &[(1, "one"), (22, "twenty-two")]).render();
        let mut by_hand = Table::new(["n", "name"]);
        by_hand.row(["1", "one"]);
        by_hand.row(["22", "twenty-two"]);
        assert_eq!(of, by_hand.render());
        let pairs = Table::of_pairs(["n", "name"], [("1", "one".to_string())]).render();
        assert_eq!(pairs, "n  name\n-  ----\n1  one\n");
    }
}
