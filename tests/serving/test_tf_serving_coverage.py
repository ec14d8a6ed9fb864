"""The upgrade-path script: it finds TF Serving's test cases and which of them our tests cite."""

from tests.serving.tf_serving_coverage import cases_in, cited_in

CPP = """
TEST(JsontensorTest, SingleUnnamedTensor) {
TEST_F(HttpRestApiHandlerTest, kPathRegex) {
TYPED_TEST(ClassifyRegressRequestTest, JsonErrors) {
// TEST(Commented, Out) is not at the start of a line
"""


def test_finds_every_kind_of_case_and_matches_whole_names():
    cases = cases_in(CPP)
    assert cases == ["JsontensorTest.SingleUnnamedTensor", "HttpRestApiHandlerTest.kPathRegex",
                     "ClassifyRegressRequestTest.JsonErrors"]
    ours = ['"""JsontensorTest.SingleUnnamedTensorWithSignature"""', "# HttpRestApiHandlerTest.kPathRegex: n/a"]
    assert cited_in(ours, cases) == {"HttpRestApiHandlerTest.kPathRegex"}
