// node tools/gltf/validate.mjs FILE.glb -> the Khronos glTF validator's report (JSON) on stdout
import { readFileSync } from "node:fs";
import validator from "gltf-validator";

const path = process.argv[2];
const report = await validator.validateBytes(new Uint8Array(readFileSync(path)), { maxIssues: 200 });
process.stdout.write(JSON.stringify(report));
