// Compile-time checks of the public types (npm run typecheck): the lines
// marked @ts-expect-error must fail to compile, the others must compile.
import { AnalyticsClient, AnalyticsError, type QueryResult } from "../src/index.js";

type Queries = {
  low_stock: { params: { threshold?: number; limit?: number }; row: { id: string; quantity: string } };
};

const client = new AnalyticsClient<Queries>({
  baseUrl: "https://api.example.com",
  getToken: async () => "token",
});

export async function typed(): Promise<void> {
  const result: QueryResult<{ id: string; quantity: string }> = await client.namedQuery("low_stock", {
    limit: 5,
  });
  const quantity: string | undefined = result.rows[0]?.quantity;
  void quantity;
  // @ts-expect-error: not a named query of this client
  await client.namedQuery("nope", {});
  // @ts-expect-error: limit is a number
  await client.namedQuery("low_stock", { limit: "5" });
  // @ts-expect-error: no such parameter
  await client.namedQuery("low_stock", { since: 1 });
  try {
    await client.query("SELECT 1");
  } catch (error) {
    if (error instanceof AnalyticsError) {
      const status: number = error.status;
      const requestId: string | null = error.requestId;
      void [status, requestId];
    }
  }
  for await (const page of client.pages<{ n: string }>("SELECT count(*) AS n FROM inventory")) {
    const n: string | undefined = page.rows[0]?.n;
    void n;
  }
}
