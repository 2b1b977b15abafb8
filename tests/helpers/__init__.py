"""Code the tests share that is not a test module: worker scripts started in
fresh processes (`python tests/helpers/NAME.py ...`), the tiny pretrainer and
batch of the distributed checks, files written from public formats'
documentation, the tokenizer's reference corpus. The tests import them as
`helpers.NAME` (tests/ is on `sys.path` under pytest); a script run by path
puts tests/ there itself."""
