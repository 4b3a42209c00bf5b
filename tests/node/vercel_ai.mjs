// The Vercel AI SDK's default OpenAI provider against the gateway, as a team brings it: `openai(model)` calls
// /v1/responses. Driven by tests/test_clients.py, which reads one JSON line per call from stdout and rates the
// answers through /api/feedback. Usage: node vercel_ai.mjs BASE_URL MODEL QUESTION
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, streamText } from "ai";

const [baseURL, model, question] = process.argv.slice(2);
const openai = createOpenAI({ baseURL, apiKey: "unused-on-loopback" });

// The ids to rate an answer ride in the response object's `tuneloop` field (the raw body, or the raw
// response.created / response.completed chunks of a stream).
const generated = await generateText({ model: openai(model), prompt: question, maxRetries: 0 });
console.log(
  JSON.stringify({
    call: "generateText",
    text: generated.text,
    finishReason: generated.finishReason,
    responseId: generated.providerMetadata?.openai?.responseId ?? null,
    tuneloop: generated.response.body?.tuneloop ?? null,
  }),
);

const streamed = streamText({ model: openai(model), prompt: question, maxRetries: 0, includeRawChunks: true });
let tuneloop = null;
let text = "";
for await (const part of streamed.fullStream) {
  if (part.type === "text-delta") text += part.text;
  if (part.type === "raw" && part.rawValue?.type === "response.completed") tuneloop = part.rawValue.response.tuneloop;
  if (part.type === "error") throw part.error;
}
console.log(JSON.stringify({ call: "streamText", text, finishReason: await streamed.finishReason, tuneloop }));

// A wrong model name surfaces as the SDK's APICallError with our OpenAI-shaped message.
try {
  await generateText({ model: openai("no-such-model"), prompt: question, maxRetries: 0 });
  console.log(JSON.stringify({ call: "unknownModel", error: null }));
} catch (error) {
  console.log(JSON.stringify({ call: "unknownModel", status: error.statusCode ?? null, error: error.message }));
}
