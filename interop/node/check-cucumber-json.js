// Checks a cucumber.json with the official converter (npm @cucumber/cucumber-json-converter):
// it validates the file against the JSON schemas of the Cucumber implementations
// (cucumber-js, cucumber-jvm, cucumber-ruby, behave) and converts it to the common form.
// Usage: node check-cucumber-json.js FILE. Prints the number of features, scenarios and
// steps the converter read; exits 1 with its error when it rejects the file.
'use strict';
const fs = require('fs');
const { convert } = require('@cucumber/cucumber-json-converter');

const file = process.argv[2];
if (!file) {
  console.error('usage: node check-cucumber-json.js FILE');
  process.exit(2);
}
try {
  const converted = convert(JSON.parse(fs.readFileSync(file, 'utf8')));
  const features = converted.features || converted;
  let scenarios = 0;
  let steps = 0;
  for (const f of features) {
    for (const e of f.elements || []) {
      scenarios += 1;
      steps += (e.steps || []).length;
    }
  }
  console.log(`accepted: ${features.length} features, ${scenarios} scenarios, ${steps} steps`);
} catch (e) {
  console.error(String(e && e.message ? e.message : e).slice(0, 4000));
  process.exit(1);
}
