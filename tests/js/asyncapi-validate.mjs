// Validates an AsyncAPI document with the official parser: `node asyncapi-validate.mjs FILE`
// (YAML or JSON). Prints every diagnostic of severity error and exits 1 if there is one.
import { readFileSync } from "node:fs";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";

const text = readFileSync(process.argv[2], "utf8");
const { diagnostics } = await new Parser().parse(text);
const errors = diagnostics.filter((d) => d.severity === DiagnosticSeverity.Error);
for (const d of errors) {
  console.error(`${d.code}: ${d.message} at /${d.path.join("/")}`);
}
process.exit(errors.length ? 1 : 0);
