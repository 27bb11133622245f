/* The chat page served at GET /: plain HTML/JS, no build step. */
const char codi_server_page_html[] =
    "<!doctype html><html><head><meta charset=\"utf-8\"><title>codi</title></head>"
    "<body><p>codi server. Use POST /v1/chat/completions.</p></body></html>\n";
