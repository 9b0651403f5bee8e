// Validates AsyncAPI documents with the official parser: `node asyncapi-validate.mjs FILE...`
// (YAML or JSON). Prints each diagnostic of severity error as "FILE: code: message at path",
// and exits 1 if there is any. Several files share one start of node and of the parser.
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const parser = new Parser();
let failed = false;
for (const file of process.argv.slice(2)) {
  const { diagnostics } = await parser.parse(readFileSync(file, "utf8"));
  for (const d of diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error)) {
    console.error(`${file}: ${d.code}: ${d.message} at /${d.path.join("/")}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
